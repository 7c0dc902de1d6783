"""What a start removes before it writes: temporaries of writes a killed process left, and checkpoints of shards
that committed; after a run that ended clean, without walking the stage and manifest folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests import layout
from manifests.storage import TEMP_MARKER
from pipeline.config import config_to_yaml
from pipeline.run import _clean_leftovers, load_run_config, open_run
from tests.conftest import run_local, synth_config

TEMP = f"{TEMP_MARKER}0123456789ab"


@pytest.fixture()
def run(tmp_path: Path, demo_vos: Path) -> Path:
    config = synth_config(tmp_path / "run", demo_vos)
    run_local(config)
    (tmp_path / "run" / layout.RUN_YAML).write_text(config_to_yaml(config))  # what `ffp run` writes at first start
    return tmp_path / "run"


def plant(run: Path) -> dict[str, Path]:
    """A temporary where each kind of writer leaves one when it is killed mid-write."""
    places = {
        "tar": run / f"{layout.work_dir('ingest')}/shard-000000.tar{TEMP}",
        "manifest": run / f"{layout.manifest_path('augment', 1)}{TEMP}",
        "index": run / f"{layout.COMMIT_CACHE}{TEMP}",
        "log": run / f"{layout.LOGS_DIR}/run-x.json{TEMP}",
        "root": run / f"{layout.RUN_YAML}{TEMP}",
    }
    for path in places.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    return places


def start(run: Path) -> None:
    """What ``ffp run RUN`` does first, before it writes anything."""
    storage, _, plan = open_run(load_run_config(str(run)))
    _clean_leftovers(storage, plan)


def test_a_start_after_an_unclean_end_removes_every_temporary(run: Path) -> None:
    places = plant(run)
    start(run)
    assert [name for name, path in places.items() if path.exists()] == []


def test_a_start_after_a_clean_end_skips_only_the_stage_and_manifest_folders(run: Path) -> None:
    """A run that ended clean left no temporary in the stage and manifest folders (a killed actor's shard was
    retried, and a retry removes its temporaries first); the small folders are still cleaned, and the marker goes
    before anything is written, so a start that is killed in turn is followed by a full clean."""
    (run / layout.ENDED_CLEAN).parent.mkdir(parents=True, exist_ok=True)
    (run / layout.ENDED_CLEAN).write_bytes(b"")
    places = plant(run)
    start(run)
    assert [name for name, path in places.items() if path.exists()] == ["tar", "manifest"]
    assert not (run / layout.ENDED_CLEAN).exists()
    start(run)  # this start did not end clean: the next one walks everything
    assert [name for name, path in places.items() if path.exists()] == []
