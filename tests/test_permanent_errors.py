"""Failures the input's content causes (an empty file, not a video, cannot be decoded) are marked permanent and left
alone by ``ffp retry``, which redoes them only when asked (an input fixed in place); transient ones (not found) are
redone as before. Real runs of the Ingest stage on the in-process driver."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from manifests.layout import manifest_path
from manifests.storage import Storage
from media.errors import VideoError, is_permanent_reason
from pipeline.graph import build_graph
from pipeline.plan import RunPlan, State, retry_statuses
from stages.ingest import Ingest
from tests.conftest import FAST_INGEST, make_config, manifest_rows, run_local
from tests.data.bad import media


@pytest.mark.parametrize("reason, permanent", [
    ("empty file", True),
    ("not a video: no video stream", True),
    ("cannot open: not a video or damaged container ([Errno 1094995529] Invalid data found)", True),
    ("cannot decode: no frames", True),
    ("too large: 16000x16000 > max_pixels (16777216)", True),
    ("cannot decode 00003.jpg: not a JPEG or PNG image, or damaged", True),
    ("corrupt frames: source frames 3-5 of this clip are damaged", True),
    ("not found: /data/raw/a.mp4", False),
    ("cannot open: not a video or damaged container ([Errno 5] Input/output error)", False),
    ("cannot open foo://bucket/a.mp4: Protocol not known: foo", False),
    ("cannot encode: broken pipe", False),
])
def test_a_failure_is_permanent_when_the_content_is_at_fault(reason: str, permanent: bool) -> None:
    assert is_permanent_reason(reason) is permanent
    assert VideoError(reason).permanent is permanent


def test_a_video_error_keeps_its_verdict_across_processes() -> None:
    error = pickle.loads(pickle.dumps(VideoError("frame 3: odd", permanent=True)))
    assert error.permanent and str(error) == "frame 3: odd"


def test_retry_statuses() -> None:
    assert retry_statuses() == {"failed"}
    assert retry_statuses(quarantined=True) == {"failed", "quarantined"}
    assert retry_statuses(permanent=True) == {"failed", "permanent"}


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Any]:
    """A list of three inputs, one shard each: a good clip, an empty file, and a clip not there yet."""
    folder = tmp_path / "inputs"
    (folder / "clips").mkdir(parents=True)
    media.good_clip(folder / "clips/good.mp4")
    (folder / "clips/empty.mp4").write_bytes(b"")
    (folder / "list.csv").write_text("path\nclips/good.mp4\nclips/empty.mp4\nclips/later.mp4\n")
    config = make_config(tmp_path / "run", inputs=[{"kind": "list", "path": str(folder / "list.csv")}],
                         stages={"ingest": {"type": "ingest", "params": FAST_INGEST}}, shard_size=1)
    return {"folder": folder, "config": config, "run": tmp_path / "run"}


@pytest.fixture
def processed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The source file names Ingest processes, in order."""
    seen: list[str] = []
    process = Ingest.process

    def spy(self: Ingest, samples: Any) -> Any:
        seen.extend(Path(s.columns["uri"]).name for s in samples)
        return process(self, samples)

    monkeypatch.setattr(Ingest, "process", spy)
    return seen


def rows_by_file(run: Path) -> dict[str, dict[str, Any]]:
    return {Path(row["source_uri"]).name: row for row in manifest_rows(run, "ingest")}


def test_an_empty_file_is_not_retried_while_a_missing_one_is(inputs: dict[str, Any], processed: list[str]) -> None:
    run_local(inputs["config"])
    rows = rows_by_file(inputs["run"])
    assert (rows["empty.mp4"]["status"], rows["empty.mp4"]["reason"], rows["empty.mp4"]["permanent"]) == (
        "failed", "empty file", True)
    assert rows["later.mp4"]["status"] == "failed" and rows["later.mp4"]["reason"].startswith("not found")
    assert rows["later.mp4"]["permanent"] is False and rows["good.mp4"]["permanent"] is None
    empty_shard = rows["empty.mp4"]["shard"]
    manifest = inputs["run"] / manifest_path("ingest", empty_shard)
    committed = manifest.stat().st_mtime_ns
    plan = RunPlan(Storage(str(inputs["run"])), build_graph(inputs["config"]))
    assert plan.state("ingest", empty_shard, retry=retry_statuses()).state == State.DONE  # nothing to retry there
    assert plan.state("ingest", rows["later.mp4"]["shard"], retry=retry_statuses()).state == State.RETRY

    media.good_clip(inputs["folder"] / "clips/later.mp4")  # the missing input arrives
    processed.clear()
    run_local(inputs["config"], retry_stages={"ingest"}, retry=retry_statuses())
    assert processed == ["later.mp4"]
    rows = rows_by_file(inputs["run"])
    assert rows["later.mp4"]["status"] == "ok"
    assert (rows["empty.mp4"]["status"], rows["empty.mp4"]["attempts"]) == ("failed", 1)
    assert manifest.stat().st_mtime_ns == committed  # its shard was not run at all

    processed.clear()
    for _ in range(3):  # more retries than max_attempts: still failed and permanent, never quarantined
        run_local(inputs["config"], retry_stages={"ingest"}, retry=retry_statuses(quarantined=True))
    assert processed == []
    assert rows_by_file(inputs["run"])["empty.mp4"]["status"] == "failed"


def test_a_shard_with_both_redoes_only_its_transient_failure(inputs: dict[str, Any], processed: list[str]) -> None:
    config = inputs["config"].model_copy(update={"shard_size": 4})  # the three inputs in one shard
    run_local(config)
    assert len({row["shard"] for row in rows_by_file(inputs["run"]).values()}) == 1
    processed.clear()
    run_local(config, retry_stages={"ingest"}, retry=retry_statuses())
    assert processed == ["later.mp4"]  # the shard runs again, the empty file's row is kept as it was
    rows = rows_by_file(inputs["run"])
    empty, later = rows["empty.mp4"], rows["later.mp4"]
    assert (empty["attempts"], empty["permanent"], later["attempts"]) == (1, True, 2)


def test_an_input_fixed_in_place_is_redone_when_asked(inputs: dict[str, Any], processed: list[str]) -> None:
    run_local(inputs["config"])
    media.good_clip(inputs["folder"] / "clips/empty.mp4")  # same path, new content
    processed.clear()
    run_local(inputs["config"], retry_stages={"ingest"}, retry=retry_statuses(permanent=True))
    assert sorted(processed) == ["empty.mp4", "later.mp4"]  # the permanent failure and the transient one
    rows = rows_by_file(inputs["run"])
    fixed = rows["empty.mp4"]
    assert (fixed["status"], fixed["attempts"], fixed["permanent"]) == ("ok", 1, None)
    assert (rows["later.mp4"]["status"], rows["later.mp4"]["attempts"]) == ("failed", 2)  # still missing
