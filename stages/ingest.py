"""Ingest: real videos (or VOS image sequences with instance masks) in, fixed-size clips out.

Each source is probed, cut into up to ``max_clips`` clips of ``num_frames`` frames at ``fps`` (decoded once,
streaming), resized and centre-cropped on the displayed picture, converted to one colour (BT.709 limited unless
configured) and encoded as H.264; docs/media.md says what is done to which source and which columns say so. A
VOS sequence also gives the per-instance masks of the kept frames, losslessly (``masks.npz``, palette ids,
unchanged when no resize is needed).

Raw video (params ``shots`` and ``gates``, off by default): clips are placed inside the shots found in the same
decode pass and gated for borders, brightness, contrast, sharpness and motion (``media/shot_cut.py``; docs/media.md).
With ``signature: true`` each clip also gets a perceptual ``signature`` of its output frames (``media/signature.py``),
which the run-wide near-duplicate pass compares (``media/dedup.py``).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import cv2
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem
from pydantic import Field, field_validator

from media.arrays import json_bytes, npz_bytes
from media.colour import OutputColour
from media.errors import VideoError, is_permanent_reason
from media.gates import GateConfig
from media.png import png_bytes
from media.shot_cut import ShotCut, cut_in_shots
from media.shots import ShotConfig
from media.sources import NotRegularFile, display_uri, input_fs, list_frames, list_inputs, source_columns
from media.video_io import Clip, ClipSpec, Cut, VideoInfo, cut_clips_from_frames, cut_video, probe, rewound
from pipeline.stage import Params, Result, Sample, Stage

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


RGB = tuple[int, int, int]

T = TypeVar("T")


class ShotParams(Params):
    """Raw video: clips are placed inside shots (``media/shots.py``)."""

    threshold: float = Field(27.0, gt=0, description="ContentDetector score (0-255) that makes a cut")
    jump_ratio: float = Field(4.0, gt=1, description="jump cuts: changed share of a frame over its neighbours' mean")
    jump_min_changed: float = Field(0.02, gt=0, le=1, description="jump cuts: the least share of the picture changed")
    min_shot_frames: int = Field(8, ge=1, description="a cut closer than this many frames to the last is ignored")
    black_level: float = Field(20.0, ge=0, le=255, description="mean luma below which a frame is part of a fade")
    margin_frames: int = Field(2, ge=0, description="frames kept clear of a cut on each side of a clip")
    max_source_clips: int = Field(256, ge=1, description="clips one source gives at most (max_clips is per shot)")

    def config(self) -> ShotConfig:
        return ShotConfig(self.threshold, self.jump_ratio, self.jump_min_changed, self.min_shot_frames,
                          self.black_level, self.margin_frames)


class GateParams(Params):
    """Quality and motion gates of each clip (``media/gates.py``): brightness and contrast on 0-255 full-range luma,
    the border level on the luma as stored."""

    min_brightness: float = Field(10.0, ge=0, le=255, description="mean luma below which a clip is too dark")
    max_brightness: float = Field(240.0, ge=0, le=255, description="mean luma above which a clip is too bright")
    min_contrast: float = Field(6.0, ge=0, description="luma standard deviation below which a clip is near-constant")
    min_sharpness: float = Field(15.0, ge=0, description="Laplacian variance (at 480 px wide) below which it is blurry")
    min_motion: float = Field(0.02, ge=0, description="mean optical flow, % of the width per frame, below which static")
    crop_borders: bool = Field(True, description="cut away black borders (letterbox, pillarbox) before resizing")
    border_level: float = Field(28.0, ge=0, le=255, description="a border row or column is darker than this")
    samples: int = Field(5, ge=2, le=32, description="frames measured per clip (and optical-flow pairs)")

    def config(self) -> GateConfig:
        return GateConfig(self.min_brightness, self.max_brightness, self.min_contrast, self.min_sharpness,
                          self.min_motion, self.border_level, crop_borders=self.crop_borders, samples=self.samples)


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
    output_matrix: Literal["bt709", "bt601"] = Field("bt709", description="the clips' YUV matrix (and tags)")
    output_range: Literal["tv", "pc"] = Field("tv", description="the clips' range: tv (limited, 16-235) or pc (full)")
    hdr: Literal["tonemap", "filter"] = Field(
        "tonemap", description="PQ/HLG sources: tone-mapped to SDR BT.709 (docs/media.md), or filtered")
    interlaced: Literal["deinterlace", "filter", "keep"] = Field(
        "deinterlace", description="interlaced sources: deinterlaced with bwdif, filtered, or kept as they are")
    alpha: Literal["composite", "filter"] = Field(
        "composite", description="sources with transparency: composited on alpha_background, or filtered")
    alpha_background: RGB = Field((0, 0, 0), description="RGB that transparent pixels are composited on")
    shots: ShotParams | None = Field(None, description="raw video: place clips inside shots (null: at fixed times)")
    gates: GateParams | None = Field(None, description="quality and motion gates per clip (null: none)")
    signature: bool = Field(False, description="a perceptual signature of each clip, for near-duplicate removal")

    def fingerprint_data(self) -> dict[str, Any]:
        # shots, gates and signature came later: left out while off, so that existing configs keep their fingerprints
        data = super().fingerprint_data()
        for name in ("shots", "gates", "signature"):
            if data.get(name) in (None, False):
                data.pop(name, None)
        return data

    @field_validator("alpha_background")
    @classmethod
    def _rgb_levels(cls, value: RGB) -> RGB:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError(f"alpha_background must be three levels 0-255, got {list(value)}")
        return value

    def clip_spec(self) -> ClipSpec:
        return ClipSpec(
            num_frames=self.num_frames, fps=self.fps, width=self.width, height=self.height, stride_s=self.stride_s,
            max_clips=self.max_clips, start_s=self.start_s, crf=self.crf, preset=self.preset,
            max_pixels=self.max_pixels, threads=self.threads, output=OutputColour(self.output_matrix, self.output_range),
            deinterlace=self.interlaced == "deinterlace", tonemap=self.hdr == "tonemap",
            background=self.alpha_background, signature=self.signature,
        )


class Ingest(Stage):
    version = "2"
    pair_columns = ('source_id', 'source_uri', 'clip_index', 'num_frames', 'fps', 'width', 'height')
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
        "src_stream": pa.int16(),
        "src_codec": pa.string(),
        "src_pix_fmt": pa.string(),
        "src_matrix": pa.string(),
        "src_range": pa.string(),
        "src_primaries": pa.string(),
        "src_transfer": pa.string(),
        "src_sar": pa.string(),
        "src_rotation": pa.int16(),
        "src_interlaced": pa.bool_(),
        "src_alpha": pa.bool_(),
        "src_fixes": pa.string(),
        "timestamps_repaired": pa.int32(),
        "identical_to": pa.string(),
        "signature": pa.string(),
        "shots": pa.string(),
        "shot_index": pa.int32(),
        "shot_start": pa.int32(),
        "shot_end": pa.int32(),
        **{name: pa.int32() for name in ("crop_x", "crop_y", "crop_w", "crop_h")},
        **{name: pa.float32() for name in (
            "brightness", "brightness_min", "brightness_max", "contrast", "contrast_min", "sharpness",
            "sharpness_min", "motion", "camera_motion", "object_motion", "motion_min")},
    }
    params: IngestParams

    @classmethod
    def list_sources(cls, inputs: Sequence[Any], params: Params) -> list[dict[str, Any]]:
        return list_inputs(inputs)

    @classmethod
    def input_columns(cls, row: Mapping[str, Any]) -> dict[str, Any]:
        return source_columns(row, cls.columns)

    @classmethod
    def samples_per_source(cls, params: Params) -> int:
        assert isinstance(params, IngestParams)
        if params.shots is not None:
            return params.shots.max_source_clips
        return params.max_clips

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [result for sample in samples for result in self._one(sample.columns)]

    def _one(self, source: dict[str, Any]) -> list[Result]:
        source_id = source["source_id"]
        base = {"source_id": source_id, "source_uri": display_uri(source["uri"])}
        if source.get("identical_to"):
            base["identical_to"] = source["identical_to"]
        spec = self.params.clip_spec()
        try:
            if source["kind"] == "vos":
                made = self._cut_vos(source, spec)
            elif self.params.shots is not None or self.params.gates is not None:
                return self._raw(source, spec, base)
            else:
                made = self._cut_video(source["uri"], spec)
        except VideoError as exc:  # the content's fault (empty, not a video, ...) is permanent: retries skip it
            return [Result.failed(source_id, str(exc), permanent=exc.permanent, **base)]
        except (NotRegularFile, _UnreachableUrl) as exc:  # the file may be replaced, the backend installed: retryable
            return [Result.failed(source_id, str(exc), **base)]
        except FileNotFoundError as exc:
            return [Result.failed(source_id, f"not found: {exc}", **base)]
        if isinstance(made, str):
            return [Result.filtered(source_id, made, **base)]
        facts, cut = made
        base |= facts.columns()
        if not cut.clips and not cut.lost:
            needed = self.params.num_frames / (self.params.fps or facts.fps) + self.params.start_s
            reason = f"too short: {facts.frames} frames at {facts.fps:.3g} fps, a clip needs {needed:.2f} s"
            return [Result.filtered(source_id, reason, **base)]
        if not cut.clips:  # nothing usable: one row for the source, as for any unreadable file
            return [Result.failed(source_id, cut.lost[0].reason, permanent=is_permanent_reason(cut.lost[0].reason),
                                  **base)]
        lost = [Result.failed(_clip_id(source_id, c.index), c.reason, permanent=is_permanent_reason(c.reason),
                              clip_index=c.index, **base) for c in cut.lost]
        return [*(self._result(source, facts, clip, base) for clip in cut.clips), *lost]

    def _too_small(self, width: int, height: int) -> str | None:
        if width < 2 or height < 2:
            return f"too small: {width}x{height}: a 4:2:0 clip needs at least 2x2 pixels"
        target_w, target_h = self.params.width, self.params.height
        if self.params.allow_upscale or target_w is None or target_h is None:
            return None
        if max(target_w / width, target_h / height) > 1:  # the cover scale would enlarge the frame
            return f"too small: {width}x{height} cannot fill {target_w}x{target_h} without upscaling"
        return None

    def _refusal(self, info: VideoInfo) -> str | None:
        """Why a source is filtered before decoding, by the params that choose to filter such sources."""
        colour = info.colour
        if colour is not None and colour.hdr and self.params.hdr == "filter":
            return (f"hdr: the source is HDR ({colour.hdr.upper()} transfer {colour.columns()['src_transfer']}); "
                    "set hdr: tonemap to convert it to SDR")
        if info.interlaced and self.params.interlaced == "filter":
            return "interlaced: the source's frames are interlaced; set interlaced: deinterlace to keep it"
        if colour is not None and colour.transparent and self.params.alpha == "filter":
            return (f"alpha: the source has transparency ({colour.pix_fmt}); set alpha: composite to keep it on "
                    "alpha_background")
        return self._too_small(info.width, info.height)

    def _cut_video(self, uri: str, spec: ClipSpec) -> tuple[_SourceFacts, Cut] | str:
        made = self._probed_cut(uri, spec, lambda handle, info: cut_video(handle, spec, info))
        if isinstance(made, str):
            return made
        info, cut = made
        return _SourceFacts.of_video(info, cut, self.params), cut

    def _probed_cut(self, uri: str, spec: ClipSpec, cut: Callable[[Any, VideoInfo], T]) -> tuple[VideoInfo, T] | str:
        """Probe a video source, refuse it (the reason) or cut it with ``cut(handle, info)`` in one decode pass."""
        fs, path = _input_fs(uri)
        with fs.open(path, "rb") as handle:
            info = probe(handle, max_pixels=spec.max_pixels)
            refusal = self._refusal(info)
            if refusal:
                return refusal
            if rewound(handle):
                return info, cut(handle, info)
            with fs.open(path, "rb") as again:  # a stream (an HTTP answer without a length): read it from the start
                return info, cut(again, info)

    def _raw(self, source: dict[str, Any], spec: ClipSpec, base: dict[str, Any]) -> list[Result]:
        """Clips placed inside shots and gated: a row per clip made, filtered or lost; one for the source when
        it gives none (no shot long enough, or every clip filtered by the same gate: the first clip's measures)."""
        source_id = source["source_id"]
        made = self._cut_shots(source["uri"], spec)
        if isinstance(made, str):
            return [Result.filtered(source_id, made, **base)]
        facts, cut = made
        base |= facts.columns() | {"shots": json.dumps([[s.start, s.end] for s in cut.shots])}
        if not cut.clips and not cut.filtered and not cut.lost:
            if cut.damaged and not cut.shots:
                return [Result.failed(source_id, "cannot decode: no frame decoded", permanent=True, **base)]
            lengths = [s.frames for s in cut.shots]
            shown = ", ".join(map(str, lengths[:20])) + (f" and {len(lengths) - 20} more" if len(lengths) > 20 else "")
            margin = self.params.shots.margin_frames if self.params.shots else 0
            reason = (f"no shot long enough: {len(lengths)} shot{'s' * (len(lengths) != 1)} of {shown} frames, "
                      f"a clip spans {cut.span} source frames (plus {margin} on each side)")
            if cut.damaged:
                reason += "; the stream is damaged"
            return [Result.filtered(source_id, reason, **base)]
        kinds = {f.reason.split(":")[0] for f in cut.filtered}
        if not cut.clips and not cut.lost and len(kinds) == 1:  # e.g. a slideshow, a long still: say it once
            first = cut.filtered[0]
            shots = len({f.values["shot_index"] for f in cut.filtered})
            reason = (f"{kinds.pop()}: every clip placed ({len(cut.filtered)} in {shots} shot{'s' * (shots != 1)}) "
                      f"was filtered; the first: {first.reason.split(': ', 1)[-1]}")
            gates = {k: v for k, v in first.values.items() if k not in ("shot_index", "shot_start", "shot_end",
                                                                         "start_frame")}
            return [Result.filtered(source_id, reason, **gates, **base)]
        rows = [self._result(source, facts, clip, base, cut.facts[clip.index]) for clip in cut.clips]
        rows += [Result.filtered(_clip_id(source_id, f.index), f.reason, clip_index=f.index, **f.values, **base)
                 for f in cut.filtered]
        rows += [Result.failed(_clip_id(source_id, c.index), c.reason, permanent=is_permanent_reason(c.reason),
                               clip_index=c.index, **cut.facts[c.index], **base) for c in cut.lost]
        return rows

    def _cut_shots(self, uri: str, spec: ClipSpec) -> tuple[_SourceFacts, ShotCut] | str:
        shots = self.params.shots
        # gates alone: the whole source is one shot
        config = shots.config() if shots else ShotConfig(threshold=1e9, jump_ratio=1e9, black_level=-1, margin_frames=0)
        gates = self.params.gates.config() if self.params.gates else None
        limit = shots.max_source_clips if shots else self.params.max_clips
        made = self._probed_cut(uri, spec, lambda handle, info: cut_in_shots(handle, spec, info, config, gates, limit,
                                                                             spill=self.context.spill))
        if isinstance(made, str):
            return made
        info, cut = made
        summary = Cut([], [], cut.decoded, cut.ended, cut.damaged, 0, 0)
        return _SourceFacts.of_video(info, summary, self.params), cut

    def _cut_vos(self, source: dict[str, Any], spec: ClipSpec) -> tuple[_SourceFacts, Cut] | str:
        frames = list_frames(source["uri"])
        if not frames:
            raise VideoError(f"no frames in {display_uri(source['uri'])}", permanent=True)
        fs, _ = _input_fs(source["uri"])
        frame_sources = [_image_loader(fs, f) for f in frames]
        masks = _mask_files(fs, source.get("annotations"), frames)
        first = frame_sources[0]()
        frame_sources[0] = lambda: first  # decoded once: the cutter asks for frame 0 again
        small = self._too_small(first.shape[1], first.shape[0])
        if small:
            return small
        clips = cut_clips_from_frames(frame_sources, source["fps"], spec, masks)
        facts = _SourceFacts(source["fps"], first.shape[1], first.shape[0], len(frames), {"src_codec": "images"})
        return facts, Cut(clips, [], len(frames), True, False, 0, len(clips))

    def _result(self, source: dict[str, Any], facts: _SourceFacts, clip: Clip, base: dict[str, Any],
                extra: dict[str, Any] | None = None) -> Result:
        source_id = source["source_id"]
        frame0 = clip.frame0 if clip.frame0 is not None else png_bytes(clip.first_frame)
        files = {"clip.mp4": clip.mp4, "frame0.png": frame0}
        instances: list[int] = []
        if clip.masks is not None:
            files["masks.npz"] = npz_bytes(masks=clip.masks)
            instances = [int(i) for i in np.unique(clip.masks) if i != 0]
        meta = {
            "source_id": source_id, "source_uri": base["source_uri"], "clip_index": clip.index,
            "source_frames": clip.source_frames, "fps": clip.fps, "width": clip.width, "height": clip.height,
            "instance_ids": instances, "source": facts.meta(),
        }
        extra = extra or {}
        if clip.signature is not None:
            extra = extra | {"signature": clip.signature}
        if "shot_index" in extra:
            meta["shot"] = {"index": extra["shot_index"], "start": extra["shot_start"], "end": extra["shot_end"]}
        if "crop_w" in extra:
            meta["content_box"] = [extra["crop_x"], extra["crop_y"], extra["crop_w"], extra["crop_h"]]
        files["meta.json"] = json_bytes(meta)
        return Result.ok(
            _clip_id(source_id, clip.index), files, clip_index=clip.index, start_frame=clip.source_frames[0],
            num_frames=len(clip.source_frames), fps=clip.fps, width=clip.width, height=clip.height,
            num_instances=len(instances), **extra, **base,
        )


def _clip_id(source_id: str, index: int) -> str:
    return f"{source_id}-c{index:03d}"


@dataclass(frozen=True)
class _SourceFacts:
    """What ingest learnt about a source, for its rows' ``src_*`` columns and meta.json."""

    fps: float
    width: int
    height: int
    frames: int  # decoded when decoding reached the end, else what the container states (at least those decoded)
    extra: dict[str, Any]

    @classmethod
    def of_video(cls, info: VideoInfo, cut: Cut, params: IngestParams) -> _SourceFacts:
        extra: dict[str, Any] = {"src_stream": info.stream_index, "src_codec": info.codec,
                                 "src_sar": f"{info.sample_aspect.numerator}:{info.sample_aspect.denominator}",
                                 "src_rotation": info.rotation, "src_interlaced": info.interlaced,
                                 "timestamps_repaired": cut.repaired_timestamps}
        fixes: list[str] = []
        if info.colour is not None:
            extra |= info.colour.columns() | {"src_alpha": info.colour.transparent}
            fixes += info.colour.fixes(OutputColour(params.output_matrix, params.output_range), params.hdr == "tonemap")
        if info.sample_aspect != 1:
            fixes.append("sar")
        if info.interlaced and params.interlaced == "deinterlace":
            fixes.append("deinterlace")
        if cut.repaired_timestamps:
            fixes.append("timestamps")
        extra["src_fixes"] = ",".join(fixes)
        frames = cut.decoded if cut.ended else max(info.num_frames, cut.decoded)
        return cls(info.fps, info.width, info.height, frames, extra)

    def columns(self) -> dict[str, Any]:
        return {"src_fps": self.fps, "src_width": self.width, "src_height": self.height, "src_frames": self.frames,
                **self.extra}

    def meta(self) -> dict[str, Any]:
        return {"fps": self.fps, "width": self.width, "height": self.height, "frames": self.frames,
                **{k.removeprefix("src_"): v for k, v in self.extra.items()}}


class _UnreachableUrl(Exception):
    """A source URL that no filesystem can open (unknown protocol, a missing fsspec backend)."""


def _input_fs(uri: str) -> tuple[Any, str]:
    try:
        return input_fs(uri)
    except (ValueError, ImportError) as exc:  # fsspec: "Protocol not known: foo", "Install s3fs to access S3"
        raise _UnreachableUrl(f"cannot open {uri}: {exc}") from exc


def _image_loader(fs: Any, path: str) -> Callable[[], np.ndarray]:
    return lambda: _decode_image(fs.cat_file(path), posixpath.basename(path))


def _decode_image(data: bytes, name: str = "image") -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError(f"cannot decode {name}: not a JPEG or PNG image, or damaged", permanent=True)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _mask_files(fs: Any, annotations: str | None, frames: list[str]) -> list[Any] | None:
    """The annotation PNG of each frame (same stem), or None when the sequence has no annotations."""
    if not annotations:
        return None
    _, ann_root = input_fs(annotations)
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
