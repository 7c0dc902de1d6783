"""Ingest: real videos (or VOS image sequences with instance masks) in, fixed-size clips out.

Each source is probed, cut into up to ``max_clips`` clips of ``num_frames`` frames at ``fps`` (decoded once,
streaming), resized and centre-cropped, and encoded as H.264. A VOS sequence also gives the per-instance
masks of the kept frames, losslessly (``masks.npz``, palette ids, unchanged when no resize is needed).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from typing import Any, Literal

import cv2
import numpy as np
import pyarrow as pa
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pydantic import Field

from pipeline.stage import Params, Result, Sample, Stage
from stages.arrays import json_bytes, npz_bytes
from stages.sources import list_frames, list_inputs
from stages.video_io import Clip, ClipSpec, VideoError, cut_clips, cut_clips_from_frames, png_bytes, probe

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


class IngestParams(Params):
    num_frames: int = Field(81, ge=1, description="frames per clip")
    fps: float | None = Field(16.0, gt=0, description="clip frame rate; null keeps the source rate")
    width: int | None = Field(1280, ge=2, description="clip width (even); null with height null keeps the size")
    height: int | None = Field(720, ge=2, description="clip height (even)")
    stride_s: float | None = Field(None, gt=0, description="seconds between clip starts; null = back to back")
    max_clips: int = Field(1, ge=1, description="clips cut from one video at most")
    start_s: float = Field(0.0, ge=0, description="skip this many seconds at the start")
    crf: int = Field(18, ge=0, le=51, description="x264 constant rate factor")
    preset: Literal[X264_PRESETS] = "veryfast"  # type: ignore[valid-type]
    threads: int = Field(0, ge=0, description="x264 threads per clip; 0 = automatic")
    allow_upscale: bool = Field(False, description="keep sources smaller than the clip size (else filtered)")
    max_pixels: int = Field(4096 * 4096, ge=1, description="refuse larger frames before decoding")

    def clip_spec(self) -> ClipSpec:
        return ClipSpec(
            num_frames=self.num_frames, fps=self.fps, width=self.width, height=self.height, stride_s=self.stride_s,
            max_clips=self.max_clips, start_s=self.start_s, crf=self.crf, preset=self.preset,
            max_pixels=self.max_pixels, threads=self.threads,
        )


class Ingest(Stage):
    version = "1"
    Params = IngestParams
    is_source = True
    writes = ("clip.mp4", "frame0.png", "masks.npz", "meta.json")
    columns = {
        "source_id": pa.string(),
        "source_uri": pa.string(),
        "clip_index": pa.int16(),
        "start_frame": pa.int32(),
        "num_frames": pa.int16(),
        "fps": pa.float32(),
        "width": pa.int16(),
        "height": pa.int16(),
        "src_fps": pa.float32(),
        "src_width": pa.int32(),
        "src_height": pa.int32(),
        "src_frames": pa.int32(),
        "num_instances": pa.int16(),
    }
    params: IngestParams

    @classmethod
    def list_sources(cls, inputs: Sequence[Any], params: Params) -> list[dict[str, Any]]:
        return list_inputs(inputs)

    @classmethod
    def samples_per_source(cls, params: Params) -> int:
        assert isinstance(params, IngestParams)
        return params.max_clips

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [result for sample in samples for result in self._one(sample.columns)]

    def _one(self, source: dict[str, Any]) -> list[Result]:
        source_id = source["source_id"]
        spec = self.params.clip_spec()
        try:
            if source["kind"] == "vos":
                clips, src = self._cut_vos(source, spec)
            else:
                clips, src = self._cut_video(source["uri"], spec)
        except VideoError as exc:
            return [Result.failed(source_id, str(exc), source_id=source_id, source_uri=source["uri"])]
        except FileNotFoundError as exc:
            return [Result.failed(source_id, f"not found: {exc}", source_id=source_id, source_uri=source["uri"])]
        except _UnreachableUrl as exc:
            return [Result.failed(source_id, str(exc), source_id=source_id, source_uri=source["uri"])]
        if isinstance(src, str):
            return [Result.filtered(source_id, src, source_id=source_id, source_uri=source["uri"])]
        if not clips:
            needed = self.params.num_frames / (self.params.fps or src["fps"]) + self.params.start_s
            reason = f"too short: {src['frames']} frames at {src['fps']:.3g} fps, a clip needs {needed:.2f} s"
            return [Result.filtered(source_id, reason, source_id=source_id, source_uri=source["uri"], **_src_columns(src))]
        return [self._result(source, src, clip) for clip in clips]

    def _too_small(self, width: int, height: int) -> str | None:
        target_w, target_h = self.params.width, self.params.height
        if self.params.allow_upscale or target_w is None or target_h is None:
            return None
        if max(target_w / width, target_h / height) > 1:  # the cover scale would enlarge the frame
            return f"too small: {width}x{height} cannot fill {target_w}x{target_h} without upscaling"
        return None

    def _cut_video(self, uri: str, spec: ClipSpec) -> tuple[list[Clip], dict[str, Any] | str]:
        fs, path = _url_to_fs(uri)
        with fs.open(path, "rb") as handle:
            info = probe(handle, max_pixels=spec.max_pixels)
            src = {"fps": info.fps, "width": info.width, "height": info.height, "frames": info.num_frames}
            small = self._too_small(info.width, info.height)
            if small:
                return [], small
            return cut_clips(handle, spec, info), src

    def _cut_vos(self, source: dict[str, Any], spec: ClipSpec) -> tuple[list[Clip], dict[str, Any] | str]:
        frames = list_frames(source["uri"])
        if not frames:
            raise VideoError(f"no frames in {source['uri']}")
        fs, _ = _url_to_fs(source["uri"])
        frame_sources = [_image_loader(fs, f) for f in frames]
        masks = _mask_files(fs, source.get("annotations"), frames)
        first = frame_sources[0]()
        frame_sources[0] = lambda: first  # decoded once: the cutter asks for frame 0 again
        src = {"fps": source["fps"], "width": first.shape[1], "height": first.shape[0], "frames": len(frames)}
        small = self._too_small(first.shape[1], first.shape[0])
        if small:
            return [], small
        return cut_clips_from_frames(frame_sources, source["fps"], spec, masks), src

    def _result(self, source: dict[str, Any], src: dict[str, Any], clip: Clip) -> Result:
        source_id = source["source_id"]
        files = {"clip.mp4": clip.mp4, "frame0.png": png_bytes(clip.first_frame)}
        instances: list[int] = []
        if clip.masks is not None:
            files["masks.npz"] = npz_bytes(masks=clip.masks)
            instances = [int(i) for i in np.unique(clip.masks) if i != 0]
        meta = {
            "source_id": source_id, "source_uri": source["uri"], "clip_index": clip.index,
            "source_frames": clip.source_frames, "fps": clip.fps, "width": clip.width, "height": clip.height,
            "instance_ids": instances, "source": src,
        }
        files["meta.json"] = json_bytes(meta)
        return Result.ok(
            f"{source_id}-c{clip.index:03d}", files, source_id=source_id, source_uri=source["uri"],
            clip_index=clip.index, start_frame=clip.source_frames[0], num_frames=len(clip.source_frames),
            fps=clip.fps, width=clip.width, height=clip.height, num_instances=len(instances), **_src_columns(src),
        )


def _src_columns(src: dict[str, Any]) -> dict[str, Any]:
    return {"src_fps": src["fps"], "src_width": src["width"], "src_height": src["height"], "src_frames": src["frames"]}


class _UnreachableUrl(Exception):
    """A source URL that no filesystem can open (unknown protocol, a missing fsspec backend)."""


def _url_to_fs(uri: str) -> tuple[Any, str]:
    try:
        return url_to_fs(uri)
    except (ValueError, ImportError) as exc:  # fsspec: "Protocol not known: foo", "Install s3fs to access S3"
        raise _UnreachableUrl(f"cannot open {uri}: {exc}") from exc


def _image_loader(fs: Any, path: str) -> Callable[[], np.ndarray]:
    return lambda: _decode_image(fs.cat_file(path), posixpath.basename(path))


def _decode_image(data: bytes, name: str = "image") -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError(f"cannot decode {name}: not a JPEG or PNG image, or damaged")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _mask_files(fs: Any, annotations: str | None, frames: list[str]) -> list[Any] | None:
    """The annotation PNG of each frame (same stem), or None when the sequence has no annotations."""
    if not annotations:
        return None
    _, ann_root = url_to_fs(annotations)
    paths = [posixpath.join(ann_root, posixpath.splitext(posixpath.basename(f))[0] + ".png") for f in frames]
    missing = [p for p in paths if not fs.exists(p)]
    if missing:
        raise VideoError(f"{len(missing)} frames have no annotation PNG (first: {posixpath.basename(missing[0])})")
    return paths if isinstance(fs, LocalFileSystem) else _RemoteBytes(fs, paths)


class _RemoteBytes(Sequence[bytes]):
    """Mask files fetched only when the clip cutter asks for them."""

    def __init__(self, fs: Any, paths: list[str]) -> None:
        self.fs, self.paths = fs, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        return self.fs.cat_file(self.paths[index])
