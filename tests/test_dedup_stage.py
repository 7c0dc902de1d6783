"""Near-duplicate removal across the run (``stages/dedup.py``), on real footage: a re-encoded, rescaled copy of a
clip in another shard is filtered naming the clip kept; a resume decides the same; a new run folder that names
the first as seen filters a third copy naming the first run's clip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import pytest

from tests.conftest import make_config, manifest_rows, run_local
from tests.raw_footage import footage, write_video
from tests.test_raw_presets import ingest_params, raw_config


def copies(folder: Path, names: dict[str, tuple[str, int, int, float]]) -> Path:
    """Videos named ``name.mp4`` from (gallery clip, first frame, crf, scale): a scale below 1 makes a smaller
    picture (a re-upload at a lower resolution)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (clip, first, crf, scale) in names.items():
        frames = footage(clip, first, 60)
        if scale != 1:
            h, w = frames[0].shape[:2]
            frames = [cv2.resize(f, (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2), interpolation=cv2.INTER_AREA)
                      for f in frames]
        write_video(folder / f"{name}.mp4", frames, crf=crf)
    return folder


def dedup_config(videos: Path, run_dir: Path, **dedup: Any):
    ingest = ingest_params(raw_config("curate-videos", small=True)) | {"signature": True}
    return make_config(
        run_dir, inputs=[{"kind": "videos", "path": str(videos)}],
        stages={"ingest": {"type": "ingest", "params": ingest}, "dedup": {"type": "dedup", "params": dedup}},
        shard_size=1,  # one source per shard: the copies are in different shards
    )


def decisions(run_dir: Path) -> dict[str, dict[str, Any]]:
    ingest = {r["sample_id"]: Path(r["source_uri"]).stem for r in manifest_rows(run_dir, "ingest")}
    return {ingest[r["sample_id"]]: r for r in manifest_rows(run_dir, "dedup")}


@pytest.fixture(scope="module")
def first_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copies(tmp_path_factory.mktemp("dedup") / "videos", {
        "dog": ("01_dog.mp4", 0, 20, 1.0),
        "dog_reupload": ("01_dog.mp4", 0, 34, 0.6),  # the same moment, re-encoded worse at 60 % of the size
        "cups": ("02_cups.mp4", 0, 20, 1.0),
        "dog_later": ("01_dog.mp4", 200, 20, 1.0),  # the same scene, another moment: not a duplicate
    })


def test_a_reencoded_copy_is_filtered_naming_the_clip_kept(first_videos: Path, tmp_path: Path):
    run_local(dedup_config(first_videos, tmp_path / "run"))
    found = decisions(tmp_path / "run")
    assert sorted(found) == ["cups", "dog", "dog_later", "dog_reupload"]
    kept = {name for name, row in found.items() if row["status"] == "ok"}
    assert kept == {"dog", "cups", "dog_later"}  # of two copies, the larger source is kept
    copy, original = "dog_reupload", "dog"
    row = found[copy]
    assert row["status"] == "filtered" and row["duplicate_of"] == found[original]["sample_id"]
    assert row["reason"].startswith(f"near duplicate of {found[original]['sample_id']} (")
    assert row["duplicate_distance"] <= 12
    assert len({r["shard"] for r in found.values()}) == 4  # each in its own shard: the decision was run-wide
    # a resume redoes nothing and changes nothing
    again = run_local(dedup_config(first_videos, tmp_path / "run"))
    assert again.report.summaries == [] and decisions(tmp_path / "run") == found


def test_a_new_run_naming_the_first_as_seen_filters_its_copies(first_videos: Path, tmp_path: Path):
    run_local(dedup_config(first_videos, tmp_path / "first"))
    first = decisions(tmp_path / "first")
    more = copies(tmp_path / "more", {
        "dog_again": ("01_dog.mp4", 0, 28, 0.8),  # a third copy, in the new inputs
        "cups_later": ("02_cups.mp4", 150, 20, 1.0),  # new material
    })
    run_local(dedup_config(more, tmp_path / "second", seen_runs=[str(tmp_path / "first")]))
    second = decisions(tmp_path / "second")
    assert second["cups_later"]["status"] == "ok"
    row = second["dog_again"]
    kept_dog = next(r for name, r in first.items() if name.startswith("dog") and name != "dog_later"
                    and r["status"] == "ok")
    assert row["status"] == "filtered" and row["duplicate_of"] == kept_dog["sample_id"]
    assert f"in {tmp_path / 'first'}" in row["reason"]


def test_a_seen_run_without_the_stage_is_a_clear_error(first_videos: Path, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="has no committed 'dedup' shards"):
        run_local(dedup_config(first_videos, tmp_path / "run", seen_runs=[str(tmp_path / "empty")]))
