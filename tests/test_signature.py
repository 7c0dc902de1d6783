"""Perceptual clip signatures (``media/signature.py``) on real footage (``tests/raw_footage.py``), computed by ingest
in its own pass: copies of a clip (re-encoded at another quality, rescaled, letterboxed or pillarboxed) land within
the near-duplicate threshold of ``media/dedup.py``, other clips (other scenes, other moments of one static shot,
other shots of one edit) beyond it; the run-wide walk filters the copies of an edited video and nothing else."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from manifests.storage import Storage
from media.dedup import MAX_DISTANCE, near_duplicates
from media.signature import FRAMES, HEX_DIGITS, frame_distances, frame_hash, parse, positions
from media.video_io import decode_frames
from pipeline.stage import Sample, StageContext
from stages.ingest import Ingest, IngestParams
from tests.raw_footage import H, W, edited_video, footage, write_video
from tests.test_shots import CLIP, ingest

# scenes written as they are: name -> (first frame, gallery clip)
SCENES = {"dog": (0, "01_dog.mp4"), "dog_100": (100, "01_dog.mp4"), "dog_200": (200, "01_dog.mp4"),
          "cups": (0, "02_cups.mp4"), "cups_150": (150, "02_cups.mp4")}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("signature")
    frames = {name: footage(clip, first, 40) for name, (first, clip) in SCENES.items()}
    dog = frames["dog"]
    out = {name: write_video(folder / f"{name}.mp4", f) for name, f in frames.items()}
    out["crf40"] = write_video(folder / "crf40.mp4", dog, crf=40)  # another bitrate
    out["smaller"] = write_video(folder / "smaller.mp4", [cv2.resize(f, (288, 162), interpolation=cv2.INTER_AREA)
                                                          for f in dog], crf=28)
    out["larger"] = write_video(folder / "larger.mp4", [cv2.resize(f, (352, 198), interpolation=cv2.INTER_CUBIC)
                                                        for f in dog], crf=28)
    # the 16:9 picture in a 4:3 frame (bars above and below): the clip's centre crop to 16:9 drops the bars
    out["letterbox"] = write_video(folder / "letterbox.mp4", [np.pad(f, ((30, 30), (0, 0), (0, 0))) for f in dog])
    # the picture shrunk into a frame with bars on all four sides: only the gates' border crop removes them
    small = [cv2.resize(f, (240, 136), interpolation=cv2.INTER_AREA) for f in dog]
    out["boxed"] = write_video(folder / "boxed.mp4", [np.pad(f, ((22, 22), (40, 40), (0, 0))) for f in small])
    return out


def signature_of(path: Path, **params) -> str:
    rows = ingest(path, signature=True, max_clips=1, **params)
    assert [r.status for r in rows] == ["ok"], [r.reason for r in rows]
    return rows[0].columns["signature"]


def test_copies_are_within_the_threshold_and_other_clips_beyond_it(videos: dict[str, Path]):
    sig = {name: signature_of(path) for name, path in videos.items() if name != "boxed"}
    measured = {name: frame_distances(sig["dog"], s) for name, s in sig.items()}
    shown = ", ".join(f"{name} {sum(d)} {d}" for name, d in measured.items())
    for copy in ("crf40", "smaller", "larger", "letterbox"):
        assert sum(measured[copy]) <= MAX_DISTANCE, f"{copy} is not a near-duplicate of dog: {shown}"
    for other in ("dog_100", "dog_200", "cups", "cups_150"):
        assert sum(measured[other]) > MAX_DISTANCE, f"{other} is a near-duplicate of dog: {shown}"
    cups = sum(frame_distances(sig["cups"], sig["cups_150"]))
    assert cups > MAX_DISTANCE, f"two moments of the cups shot: {cups}"
    # other moments of one static shot stay nearer than other scenes: the threshold lies between the two
    assert max(sum(measured[n]) for n in ("dog_100", "dog_200")) < min(sum(measured[n]) for n in ("cups", "cups_150"))


def test_the_border_crop_comes_before_the_hash(videos: dict[str, Path]):
    plain = signature_of(videos["dog"], gates={"min_motion": 0})
    cropped = signature_of(videos["boxed"], gates={"min_motion": 0})
    kept = signature_of(videos["boxed"], gates={"min_motion": 0, "crop_borders": False})
    near, far = frame_distances(plain, cropped), frame_distances(plain, kept)
    assert sum(near) <= MAX_DISTANCE, f"bars cut away: {sum(near)} {near}, bars kept: {sum(far)} {far}"
    assert sum(far) > MAX_DISTANCE, f"bars cut away: {sum(near)} {near}, bars kept: {sum(far)} {far}"


def test_a_re_encoded_rescaled_edit_is_filtered_clip_by_clip_naming_the_clip_kept(tmp_path: Path):
    edited = edited_video(tmp_path)
    # the copy: every frame of the edit, at 90 % of its size and a lower quality
    copy_frames = [cv2.resize(f, (288, 162), interpolation=cv2.INTER_AREA) for f in decode_frames(str(edited.path))]
    copy = write_video(tmp_path / "copy.mp4", copy_frames, crf=32)
    # clips a second apart in a shot: back-to-back half-second clips of one slow shot can be near-duplicates
    params = {"shots": {}, "gates": {}, "max_clips": 2, "stride_s": 1.0, "signature": True}
    rows = [r for path in (edited.path, copy) for r in ingest(path, **params) if r.status == "ok"]
    original = {(r.columns["shot_index"], r.columns["clip_index"]): r for r in rows if r.sample_id.startswith("ed")}
    copied = {(r.columns["shot_index"], r.columns["clip_index"]): r for r in rows if r.sample_id.startswith("co")}
    assert len(original) == 7 and sorted(original) == sorted(copied), (sorted(original), sorted(copied))
    same = {k: frame_distances(original[k].columns["signature"], copied[k].columns["signature"]) for k in original}
    others = {(a, b): sum(frame_distances(original[a].columns["signature"], original[b].columns["signature"]))
              for a in original for b in original if a < b}
    shown = f"copies {same}; other clips of the edit {others}"
    assert all(sum(d) <= MAX_DISTANCE for d in same.values()), shown
    assert all(d > MAX_DISTANCE for d in others.values()), shown
    # the run-wide walk, the edit ranked first: each clip of the copy names the clip of the edit it copies
    ids = [r.sample_id for r in rows]
    result = near_duplicates(ids, [r.columns["signature"] for r in rows],
                             rank=[0 if r.sample_id.startswith("ed") else 1 for r in rows])
    named = {ids[i]: d.of for i, d in enumerate(result) if d is not None}
    assert named == {copied[k].sample_id: original[k].sample_id for k in original}, (named, shown)
    # unranked, the copy's clips come first by id and are the ones kept
    result = near_duplicates(ids, [r.columns["signature"] for r in rows])
    named = {ids[i]: d.of for i, d in enumerate(result) if d is not None}
    assert named == {original[k].sample_id: copied[k].sample_id for k in original}, (named, shown)


def test_an_image_sequence_hashes_like_the_video_of_its_frames(tmp_path: Path):
    frames = footage("01_dog.mp4", 0, 20)
    video = write_video(tmp_path / "dog.mp4", frames, crf=18)
    folder = tmp_path / "dog_frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    stage = Ingest(IngestParams(**{**CLIP, "signature": True}), StageContext("ingest", Storage(str(tmp_path))))
    row = stage.process([Sample("seq", 0, {"source_id": "seq", "uri": str(folder), "kind": "vos", "fps": 30.0})])[0]
    assert row.status == "ok", row.reason
    from_video = signature_of(video)
    d = frame_distances(from_video, row.columns["signature"])
    assert sum(d) <= MAX_DISTANCE // 2, f"image sequence against its video: {sum(d)} {d}"


def test_the_column_and_the_param_exist_only_when_enabled(videos: dict[str, Path]):
    off = ingest(videos["dog"], max_clips=1)
    assert "signature" not in off[0].columns
    on = signature_of(videos["dog"], shots={}, gates={})
    assert len(on) == HEX_DIGITS and parse([on]).shape == (1, FRAMES)
    assert "signature" not in IngestParams().fingerprint_data()
    assert IngestParams(signature=True).fingerprint_data()["signature"] is True


def test_a_frame_hash_ignores_brightness_and_contrast_and_moves_with_the_picture():
    frame, later = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (footage("02_cups.mp4", 0, 1)[0],
                                                                  footage("02_cups.mp4", 150, 1)[0]))
    h = frame_hash(frame)
    assert bin(h).count("1") == 32
    dimmer = (frame.astype(np.float32) * 0.7 + 30).round().astype(np.uint8)
    assert bin(h ^ frame_hash(dimmer)).count("1") <= 2
    assert bin(h ^ frame_hash(later)).count("1") >= 16
    big = cv2.resize(frame, (4 * W, 4 * H), interpolation=cv2.INTER_CUBIC)  # another size: the same hash, nearly
    assert bin(h ^ frame_hash(big)).count("1") <= 2
    assert positions(81) == [0, 27, 53, 80] and positions(16) == [0, 5, 10, 15] and positions(1) == [0] * 4
    with pytest.raises(ValueError, match="64 hex digits"):
        parse(["0" * 63])
    with pytest.raises(ValueError, match="64 hex digits"):
        parse(["x" * 64])
