"""``ffp verify --repair`` (issue 19) with real ``ffp`` processes: damage a finished run, repair it, run it again.

The run is the tiny config with 2 shards per stage (ingest -> augment -> export), so that each damage leaves
shards of the same stage, and of the stages before it, that the repair and the rerun must not touch. Each case:
damage a copy of the undisturbed run; ``ffp verify`` exits 1; ``ffp verify --repair`` exits 0 and lists exactly
the damaged shard's files, those of the same shard downstream and the finalize files of the stages touched;
``ffp run RUN`` exits 0; the run verifies clean and equals the undisturbed run; every other shard's manifest and
tar keep their sha256 and mtime (the trial's ``rewritten``); dataset.parquet is published again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from manifests import layout
from manifests.manifest import read_commit
from manifests.storage import Storage
from tests.faults.conftest import (
    FFP_CMD,
    Launcher,
    RunState,
    assert_same_samples,
    assert_trial_clean,
    check_integrity,
    ffp_verify,
    read_state,
    record_trial,
    snapshot_committed,
    undisturbed_run,
    write_tiny_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

STAGES = ("ingest", "augment", "export")
SHARDS = 2


def write_two_shard_config(inputs: Path, run_dir: Path, path: Path) -> Path:
    """``write_tiny_config`` with 2 sources per shard: 2 shards per stage on the 4 tiny sequences."""
    from pipeline.config import config_to_yaml, validate_config

    write_tiny_config(inputs, run_dir, path)
    data = yaml.safe_load(path.read_text())
    data["shard_size"] = 2
    path.write_text(config_to_yaml(validate_config(data)))
    return path


@pytest.fixture(scope="module")
def two_shard_reference(tiny_inputs: Path, tmp_path_factory: pytest.TempPathFactory, ray_tmpdir: Path) -> RunState:
    """The undisturbed run of the 2-shard tiny config: each case damages a copy of its folder."""
    base = tmp_path_factory.mktemp("repair_reference")
    state = undisturbed_run(write_two_shard_config(tiny_inputs, base / "run", base / "config.yaml"), base, ray_tmpdir)
    assert state.shards == {stage: SHARDS for stage in STAGES}, state.shards
    return state


def _tar(run_dir: Path, stage: str, shard: int) -> str:
    return read_commit(Storage(str(run_dir)), layout.manifest_path(stage, shard)).tar_path


def _flip(stage: str, shard: int) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        path = run_dir / _tar(run_dir, stage, shard)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    return damage


def _delete_manifest(stage: str, shard: int) -> Callable[[Path], None]:
    return lambda run_dir: (run_dir / layout.manifest_path(stage, shard)).unlink()


def _truncate(stage: str, shard: int) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        path = run_dir / _tar(run_dir, stage, shard)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


CASES = {
    # id: (the summary table's fault, damage, the damaged (stage, shard), what verify calls it)
    "flipped-augment-tar": ("repair: bytes flipped in a committed tar", _flip("augment", 0), ("augment", 0),
                            "tar-sha256"),
    "deleted-ingest-manifest": ("repair: a committed manifest deleted", _delete_manifest("ingest", 1), ("ingest", 1),
                                "uncommitted-tar"),
    "truncated-export-tar": ("repair: an export tar truncated", _truncate("export", 1), ("export", 1), "tar-size"),
}


def _ffp(launcher: Launcher, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FFP_CMD, *args], capture_output=True, text=True, env=launcher.env, timeout=120)


@pytest.mark.parametrize("case", list(CASES))
def test_repair_then_run_restores_the_run(
    case: str, two_shard_reference: RunState, launcher: Launcher, tmp_path: Path,
) -> None:
    kind, damage, (stage, shard), finding = CASES[case]
    reference = two_shard_reference
    assert reference.run_dir is not None
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir)
    before = snapshot_committed(run_dir)  # every manifest and tar of the run
    tars = {(s, n): _tar(run_dir, s, n) for s in STAGES for n in range(SHARDS)}
    downstream = STAGES[STAGES.index(stage):]
    targets = {(s, shard) for s in downstream}
    target_files = {p for s, n in targets for p in (layout.manifest_path(s, n), tars[(s, n)])}
    damage(run_dir)
    expected = {p for p in target_files if (run_dir / p).exists()}  # what --repair must remove, and nothing else
    expected |= {layout.finalized_marker(s) for s in downstream}
    expected |= {"export/dataset.parquet", "export/README.md"}  # export is downstream of every stage

    checked = _ffp(launcher, "verify", str(run_dir), "--json")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    findings = json.loads(checked.stdout)["findings"]
    assert any(f["kind"] == finding and f["path"] == tars[(stage, shard)] for f in findings), findings

    repaired = _ffp(launcher, "verify", str(run_dir), "--repair")
    out = repaired.stdout
    assert repaired.returncode == 0, out + repaired.stderr
    removed = {line.split()[1] for line in out.splitlines() if line.startswith("removed ")}
    assert removed == expected, out
    assert f"run `ffp run {run_dir}` to regenerate {len(targets)} shards" in out, out
    assert not any((run_dir / p).exists() for p in expected)
    after_repair = _ffp(launcher, "verify", str(run_dir))
    assert after_repair.returncode == 0, after_repair.stdout  # what is left is whole: only shards are missing

    untouched = {path: found for path, found in before.items() if path not in target_files}
    rerun = launcher.start(["run", str(run_dir)], tmp_path / "ffp-run.log")
    code = rerun.wait()
    trial = record_trial(kind, run_dir, reference, untouched, where=Counter({stage: 1}))
    assert code == 0, rerun.output()[-4000:]
    assert not launcher.wait_gone(), "Ray processes outlived the run"
    assert_trial_clean(trial)
    check_integrity(run_dir)
    assert_same_samples(read_state(run_dir), reference)
    ffp_verify(run_dir, launcher)
    assert snapshot_committed(run_dir).keys() == before.keys()
    for path in target_files:  # made again
        assert (run_dir / path).stat().st_mtime_ns > before[path][1], path
    exported = sum(status == "ok" for status in read_state(run_dir).statuses["export"].values())
    assert pq.read_table(run_dir / "export" / "dataset.parquet").num_rows == exported
    assert all((run_dir / layout.finalized_marker(s)).exists() for s in STAGES)
