"""Shot boundaries found in ingest's decode pass, and clips placed inside shots, on real footage with known cuts
(``tests/raw_footage.py``: the SAM2 gallery clips cut together, with a fade through black)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from manifests.storage import Storage
from media.shots import ShotTracker, small_planes
from media.video_io import decode_frames, resize_center_crop
from pipeline.stage import Sample, StageContext
from stages.ingest import Ingest, IngestParams
from tests.raw_footage import Edited, edited_video

CLIP = {"num_frames": 16, "fps": None, "width": 160, "height": 90, "crf": 30, "preset": "ultrafast"}


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory) -> Edited:
    return edited_video(tmp_path_factory.mktemp("raw"))


def ingest(path: Path, **params) -> list:
    stage = Ingest(IngestParams(**{**CLIP, **params}), StageContext("ingest", Storage(str(path.parent))))
    return stage.process([Sample(path.stem, 0, {"source_id": path.stem, "uri": str(path), "kind": "video"})])


def detect(path: Path) -> tuple[list[tuple[int, int]], list[int]]:
    """The shots of a video, and the frames that start one (decoded as ingest does)."""
    tracker, decisions = ShotTracker(), []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            decisions += tracker.push(index, small_planes(frame))
    decisions += tracker.close()
    assert [d.index for d in decisions] == list(range(len(decisions)))
    return [(s.start, s.end) for s in tracker.shots], [d.index for d in decisions if d.starts]


def test_every_cut_and_fade_is_found_within_one_frame(edited: Edited):
    shots, starts = detect(edited.path)
    assert len(shots) == len(edited.shots), shots
    for cut in edited.cuts:
        assert any(abs(start - cut) <= 1 for start in starts[1:]), (cut, starts)
    for (start, end), (built_start, built_end) in zip(shots, edited.shots):
        assert abs(start - built_start) <= 1 and abs(end - built_end) <= 1, (shots, edited.shots)
    black_first, black_last = edited.black
    assert not any(start <= black_first <= end or start <= black_last <= end for start, end in shots)


def test_clips_lie_inside_shots_and_keep_their_source_frames(edited: Edited):
    rows = ingest(edited.path, max_clips=3, shots={})
    made = [r for r in rows if r.status == "ok"]
    assert len(made) == 11  # 70, 45, 80 and 83-frame shots: 3 + 2 + 3 + 3 clips of 16 frames with 2-frame margins
    for row in made:
        frames = json.loads(row.read("meta.json"))["source_frames"]
        assert frames == list(range(frames[0], frames[0] + 16))
        inside = [shot for shot in edited.shots if shot[0] <= frames[0] and frames[-1] <= shot[1]]
        assert inside, f"clip {frames[0]}-{frames[-1]} spans a cut ({edited.shots})"
        assert (row.columns["shot_start"], row.columns["shot_end"]) == inside[0]
        assert row.columns["start_frame"] == frames[0]
    assert json.loads(made[0].columns["shots"]) == [list(s) for s in edited.shots]
    # on pixels: each clip's first and last frames are its source frames
    wanted = {f for row in made for f in json.loads(row.read("meta.json"))["source_frames"][::15]}
    with av.open(str(edited.path)) as container:
        source = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in wanted}
    for row in made:
        frames = json.loads(row.read("meta.json"))["source_frames"]
        clip = decode_frames(row.read("clip.mp4"))
        assert clip.shape == (16, 90, 160, 3)
        for j in (0, 15):
            expected = resize_center_crop(source[frames[j]], 160, 90).astype(float)
            assert np.abs(clip[j] - expected).mean() < 10, (row.sample_id, j)  # crf 30: a few levels
    per_shot = [sum(r.columns["shot_index"] == k for r in made) for k in range(4)]
    assert per_shot == [3, 2, 3, 3]


def test_max_clips_is_per_shot_and_max_source_clips_caps_the_source(edited: Edited):
    one = ingest(edited.path, max_clips=1, shots={})
    assert [r.columns["shot_index"] for r in one] == [0, 1, 2, 3]
    capped = ingest(edited.path, max_clips=3, shots={"max_source_clips": 2})
    assert [r.columns["clip_index"] for r in capped] == [0, 1]


def test_a_source_without_a_shot_long_enough_is_one_filtered_row_with_the_shot_lengths(edited: Edited):
    rows = ingest(edited.path, num_frames=90, shots={})
    assert len(rows) == 1 and rows[0].status == "filtered"
    assert rows[0].sample_id == "edited"
    assert "no shot long enough: 4 shots of 70, 45, 80, 83 frames" in rows[0].reason


def test_shots_and_gates_off_keep_the_fingerprint_of_existing_configs():
    data = IngestParams().fingerprint_data()
    assert "shots" not in data and "gates" not in data
    assert "shots" in IngestParams(shots={}).fingerprint_data()


def test_memory_is_bounded_by_a_clip_not_by_the_source(tmp_path: Path):
    """A source of 60 short shots (1800 frames): the decoded frames held at once never exceed one clip's (each
    clip's frames are released once it is encoded or dropped), however long the source."""
    from media.shot_cut import cut_in_shots
    from media.shots import LOOKAHEAD, ShotConfig
    from media.video_io import ClipSpec, probe
    from tests.raw_footage import footage, write_video

    dog, cups = footage("01_dog.mp4", 0, 30, (64, 36)), footage("02_cups.mp4", 0, 30, (64, 36))
    path = write_video(tmp_path / "long.mp4", [f for k in range(60) for f in (dog if k % 2 else cups)])
    spec = ClipSpec(num_frames=16, fps=None, width=64, height=36, max_clips=1, crf=30, preset="ultrafast")
    cut = cut_in_shots(str(path), spec, probe(str(path)), ShotConfig(), None, 1000)
    assert cut.decoded == 1800 and len(cut.shots) == 60
    assert len(cut.clips) == 60
    assert cut.peak_held <= spec.num_frames + LOOKAHEAD + 1  # the tracker's decisions come LOOKAHEAD frames late


def test_a_jump_cut_within_one_scene_is_found_and_a_single_shot_has_no_cut(tmp_path: Path):
    """The same static camera on the same room, 130 frames apart (the woman and the dog moved): little of the
    picture changes, so only the adaptive detector sees it; the gallery clips themselves (fast hands, running dog)
    are one shot each."""
    from tests.media_files import find_media
    from tests.raw_footage import footage, write_video

    jump = write_video(tmp_path / "jump.mp4", footage("01_dog.mp4", 0, 70) + footage("01_dog.mp4", 200, 80))
    shots, _ = detect(jump)
    assert len(shots) == 2 and abs(shots[1][0] - 70) <= 1, shots
    for name, frames in (("01_dog.mp4", 289), ("02_cups.mp4", 300)):
        assert detect(find_media("sam2_gallery", name))[0] == [(0, frames - 1)]
