"""The ground stage: the tiny random-weight Grounding DINO end to end on a real frame, and the box checks.

Random weights give arbitrary boxes, so the model tests assert what holds for any box (inside the frame,
area consistent with the box) and drive the filtered paths through thresholds and area limits measured
from the model's own output; ``select_box`` is tested on constructed detections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from manifests.manifest import Status
from media.png import png_bytes
from media.video_io import ClipSpec, cut_clips
from pipeline.graph import build_graph
from pipeline.stage import Result, Sample, Stage
from stages import registry
from stages.ground import Box, Ground, GroundParams, NoBox, prompt_of, select_box
from tests.conftest import by_id, make_config, manifest_rows, media, run_local, sample_of, stage_of

TINY = {"model": "tiny:grounding_dino"}
NO_LIMITS = {"area_limits": {}}
TARGETS = ["dog", "the brown dog on the grass", "red car", "a small white cat near the door"]


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """Frame 0 of a real clip at 320x180, as ingest writes ``frame0.png``."""
    spec = ClipSpec(num_frames=1, fps=None, width=320, height=180, preset="ultrafast")
    return cut_clips(media("sam2_gallery", "01_dog.mp4"), spec)[0].first_frame


@pytest.fixture(scope="module")
def open_stage(tiny_model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Ground:
    """Every box above 0 passes, no area limit: the stage keeps whatever the random model finds."""
    params = {**TINY, "box_threshold": 0.0, "text_threshold": 0.0, **NO_LIMITS}
    return stage_of("ground", params, tmp_path_factory.mktemp("ground"))


def samples(frame: np.ndarray, targets: Sequence[str], task: str = "swap") -> list[Sample]:
    png = png_bytes(frame)
    return [sample_of(f"c{i}-{task}", {"target": t, "task": task}, {"frame0.png": png}) for i, t in enumerate(targets)]


def test_tiny_model_grounds_a_real_frame(open_stage: Ground, frame: np.ndarray) -> None:
    height, width = frame.shape[:2]
    results = open_stage.process(samples(frame, TARGETS))
    assert [r.sample_id for r in results] == [f"c{i}-swap" for i in range(len(TARGETS))]
    for result in results:
        assert result.status == Status.OK, result.reason
        x0, y0, x1, y1 = result.columns["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert result.columns["box_area"] == pytest.approx((x1 - x0) * (y1 - y0) / (width * height), rel=1e-6)
        assert 0 < result.columns["box_score"] <= 1
        assert "[SEP]" not in result.columns["ground_label"] and "[CLS]" not in result.columns["ground_label"]


def test_threshold_one_leaves_no_box(tmp_path: Path, frame: np.ndarray) -> None:
    stage = stage_of("ground", {**TINY, "box_threshold": 1.0}, tmp_path)
    [result] = stage.process(samples(frame, ["Dog"]))
    assert result.status == Status.FILTERED
    assert result.reason == "no box for 'dog' above box_threshold 1.0 / text_threshold 0.25"


def test_area_limits_filter_with_the_measured_area(open_stage: Ground, frame: np.ndarray, tmp_path: Path) -> None:
    [found] = open_stage.process(samples(frame, ["dog"]))
    area = found.columns["box_area"]
    limits = {"swap": (min(2 * area, 0.99), 1.0), "removal": (0.0, area / 2)}
    stage = stage_of("ground", {**TINY, "box_threshold": 0.0, "area_limits": limits}, tmp_path)
    [too_small] = stage.process(samples(frame, ["dog"], task="swap"))
    [too_large] = stage.process(samples(frame, ["dog"], task="removal"))
    assert too_small.status == too_large.status == Status.FILTERED
    assert too_small.reason == f"box area {area:.4f} of the frame is below the swap minimum {limits['swap'][0]}"
    assert too_large.reason == f"box area {area:.4f} of the frame is above the removal maximum {area / 2}"
    assert too_small.columns["box"] == found.columns["box"]  # filtered rows keep the box for inspection


def test_batch_gives_the_boxes_of_one_by_one(open_stage: Ground, frame: np.ndarray) -> None:
    batch = samples(frame, TARGETS)  # prompts of different lengths: padded text in one forward pass
    together = open_stage.process(batch)
    alone = [open_stage.process([sample])[0] for sample in batch]
    for a, b in zip(together, alone, strict=True):
        assert a.status == b.status == Status.OK
        np.testing.assert_allclose(a.columns["box"], b.columns["box"], atol=1e-3)
        assert a.columns["box_score"] == pytest.approx(b.columns["box_score"], abs=1e-5)
        assert a.columns["ground_label"] == b.columns["ground_label"]


def test_mixed_frame_sizes_in_one_batch(open_stage: Ground, frame: np.ndarray) -> None:
    small = frame[::2, ::2].copy()
    mixed = samples(frame, ["dog"]) + [sample_of("s-swap", {"target": "dog", "task": "swap"},
                                                 {"frame0.png": png_bytes(small)})]
    big, little = open_stage.process(mixed)
    assert big.status == little.status == Status.OK
    assert big.columns["box"][2] <= 320 and little.columns["box"][2] <= 160 and little.columns["box"][3] <= 90
    np.testing.assert_allclose(big.columns["box"], open_stage.process(mixed[:1])[0].columns["box"], atol=1e-3)


@pytest.mark.parametrize(
    ("columns", "files", "reason"),
    [
        ({"task": "swap"}, None, "no target phrase"),
        ({"target": " . ", "task": "swap"}, None, "no target phrase"),
        ({"target": "dog", "task": "recolor"}, None, "unknown task 'recolor'"),
        ({"target": "dog " * 80, "task": "swap"}, None, "more than the model's"),
        ({"target": "dog", "task": "swap"}, {"frame0.png": b"not a png"}, "frame0.png"),
    ],
)
def test_bad_inputs_fail(open_stage: Ground, frame: np.ndarray, columns: dict, files: dict | None, reason: str) -> None:
    good = samples(frame, ["dog"])[0]
    bad = sample_of("bad-swap", columns, files or {"frame0.png": png_bytes(frame)})
    results = open_stage.process([bad, good])
    assert results[0].status == Status.FAILED and reason in results[0].reason
    assert results[1].status == Status.OK  # one bad sample does not spoil its batch


def test_prompt_is_one_lowercase_phrase_ending_with_a_dot() -> None:
    assert prompt_of("  The Red  Car ") == "the red car."
    assert prompt_of("st. bernard dog.") == "st bernard dog."  # inner dots would split it into two phrases


# select_box on constructed detections ---------------------------------------------------------------------


def test_select_box_takes_the_best_valid_score() -> None:
    scores = torch.tensor([0.4, float("nan"), 0.9, 0.95, 0.7])
    boxes = torch.tensor([
        [10.0, 10.0, 50.0, 40.0],
        [0.0, 0.0, 90.0, 90.0],  # NaN score
        [5.0, float("inf"), 20.0, 30.0],  # infinite coordinate
        [30.0, 30.0, 30.5, 60.0],  # half a pixel wide
        [-20.0, 40.0, 150.0, 120.0],  # sticks out of the frame: clipped
    ])
    box = select_box(scores, boxes, ["a", "b", "c", "d", "e"], width=100, height=80)
    assert box == Box(0.0, 40.0, 100.0, 80.0, pytest.approx(0.7), "e")
    assert box.area_fraction(100, 80) == pytest.approx(0.5)


def test_select_box_prefers_the_higher_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 60, 60]], dtype=np.float32)
    assert select_box(np.array([0.3, 0.8]), boxes, ["x", "y"], 100, 100).label == "y"
    assert select_box(np.array([0.8, 0.3]), boxes, ["x", "y"], 100, 100).label == "x"


def test_select_box_rejects_when_nothing_is_valid() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    boxes = torch.tensor([
        [float("nan"), 0.0, 10.0, 10.0],
        [200.0, 10.0, 300.0, 50.0],  # right of the frame
        [40.0, 40.0, 20.0, 60.0],  # x1 < x0
        [10.0, 10.0, 10.0, 10.0],  # a point
    ])
    with pytest.raises(NoBox, match=r"4 candidates \(1 non-finite, 3 degenerate or outside the 100x80 frame\)"):
        select_box(scores, boxes, ["a"] * 4, width=100, height=80)
    with pytest.raises(NoBox, match="no candidate"):
        select_box(torch.zeros(0), torch.zeros(0, 4), [], 100, 80)


def test_select_box_refuses_misaligned_detections() -> None:
    with pytest.raises(ValueError, match="do not line up") as raised:
        select_box(torch.ones(2), torch.ones(2, 3), ["a", "b"], 100, 80)
    assert not isinstance(raised.value, NoBox)
    with pytest.raises(ValueError, match="do not line up"):
        select_box(torch.ones(2), torch.ones(2, 4), ["a"], 100, 80)


# Params and fingerprint --------------------------------------------------------------------------------------


def test_params_reject_bad_area_limits() -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        GroundParams(area_limits={"recolor": (0.1, 0.5)})
    with pytest.raises(ValueError, match="0 <= min < max <= 1"):
        GroundParams(area_limits={"swap": (0.5, 0.2)})


class TargetDog(Stage):
    """Stands in for the planner: ``<clip>-swap`` and ``<clip>-removal``, both targeting 'dog'."""

    reads = ("frame0.png",)
    columns = {"task": pa.string(), "target": pa.string()}

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [Result.ok(f"{s.sample_id}-{t}", task=t, target="dog") for s in samples for t in ("swap", "removal")]


def config(run_dir: Path, ground: dict) -> object:
    return make_config(
        run_dir, inputs=[{"kind": "videos", "path": str(media("sam2_gallery", "01_dog.mp4"))}],
        stages={
            "ingest": {"type": "ingest", "params": {"num_frames": 1, "fps": None, "width": 320, "height": 180,
                                                    "preset": "ultrafast"}},
            "plan": {"type": "target_dog"},
            "ground": {"type": "ground", "params": ground},
        },
    )


@pytest.fixture
def target_dog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.STAGES, "target_dog", f"{__name__}:TargetDog")


@pytest.mark.usefixtures("target_dog")
def test_manifest_rows_through_the_worker(tmp_path: Path) -> None:
    ground = {**TINY, "box_threshold": 0.0, **NO_LIMITS}
    run_local(config(tmp_path / "run", ground))
    [clip] = [row["sample_id"] for row in manifest_rows(tmp_path / "run", "ingest")]
    rows = by_id(manifest_rows(tmp_path / "run", "ground"))
    assert set(rows) == {f"{clip}-swap", f"{clip}-removal"}
    for row in rows.values():
        assert row["status"] == "ok", row
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 180
        assert math.isclose(row["box_area"], (x1 - x0) * (y1 - y0) / (320 * 180), rel_tol=1e-5)


@pytest.mark.usefixtures("target_dog")
def test_fingerprint_follows_model_and_thresholds(tmp_path: Path) -> None:
    def fingerprint(**ground: object) -> str:
        return build_graph(config(tmp_path / "run", {**TINY, **ground})).nodes["ground"].fingerprint

    base = fingerprint()
    assert fingerprint(box_threshold=0.5) != base
    assert fingerprint(text_threshold=0.5) != base
    assert fingerprint(area_limits={"swap": (0.02, 0.8)}) != base
    assert fingerprint(model="IDEA-Research/grounding-dino-tiny") != base
    assert fingerprint() == base
    extra = Ground.fingerprint_extra(GroundParams(**TINY))
    assert extra["model"] == "tiny:grounding_dino" and "tiny_builder" in extra and "prompt_format" in extra
