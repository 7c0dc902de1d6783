"""Stylize: restyle a clip with Wan VACE (diffusers ``WanVACEPipeline``), guided by its depth and a style image.

Per sample the clip's first ``num_frames`` frames and their depth maps (the depth stage's ``depth.npz``, uint16,
near = bright) are brought to ``width`` x ``height`` with the same geometry (``video_io.resize_center_crop``, the
ingest geometry), and VACE generates a new clip from the depth video (``video``, ``mask=None``: everything is
regenerated under depth control), ``style.png`` as the reference image and ``caption_edit`` as the prompt.

With ``first_frame: stylized`` a sample that has ``stylized.png`` (the content image already stylized, from an
image-pair dataset) gives it as frame 0 to keep: frame 0 of ``video`` is that image and the VACE mask is black on
frame 0 and white elsewhere; a sample without one falls back to depth only. The ``stylize_first_frame`` column
says which was used.

Outputs, all at the output size: ``src.mp4`` (the clip's frames the model's depth came from; ingest's own bytes
when nothing was resized or trimmed), ``edit.mp4``, ``edit0.png`` (its first frame, lossless) and ``mask.npz``
(``masks``: uint8 T x H x W, all 255: a global edit). A clip shorter than ``num_frames`` and an empty
``caption_edit`` are ``filtered``; depth that does not match the clip and unreadable inputs are ``failed``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from media.arrays import read_npz
from media.errors import VideoError
from media.images import ImageError, read_rgb
from media.video_io import resize_center_crop
from models.wan import WanParams, WanStage, generation_columns, generator, sample_seed, to_uint8
from pipeline.stage import Result, Sample
from stages.depth import depth_to_uint8


class StylizeParams(WanParams):
    model: str = Field("Wan-AI/Wan2.1-VACE-14B-diffusers", description="a WanVACEPipeline checkpoint or tiny:wan_vace")
    control_hints = True  # VACE: no first_block/magcache cache (models.wan.WanParams)
    conditioning_scale: float = Field(1.0, ge=0, description="weight of the VACE control (depth, first frame)")
    first_frame: Literal["none", "stylized"] = Field(
        "none", description="stylized: keep a sample's stylized.png as frame 0 (depth only for samples without one)"
    )


def depth_frames(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint16 depth maps (T x H x W) as 3-channel uint8 frames at ``width`` x ``height`` (the RGB frames'
    geometry), the form VACE's depth control takes."""
    resized = np.stack([resize_center_crop(d, width, height) for d in depth_to_uint8(depth)])
    return np.repeat(resized[..., None], 3, axis=3)


def depth_mismatch(depth: np.ndarray, clip: tuple[int, ...]) -> str | None:
    """Why ``depth`` cannot guide the clip of shape ``clip`` (T, H, W), or ``None``. Depth may be stored smaller than
    the clip (the depth stage's ``max_side``) but must be uint16, one map per frame, with the clip's aspect ratio
    (within the rounding of even sides), so that one crop geometry fits both."""
    frames, height, width = clip
    if depth.dtype != np.uint16 or depth.ndim != 3 or len(depth) != frames:
        return f"depth {depth.dtype} {depth.shape} does not match the clip {clip} (expected uint16, one map per frame)"
    aspect, depth_aspect = width / height, depth.shape[2] / depth.shape[1]
    if abs(depth_aspect - aspect) > 0.02 * aspect:
        return f"depth maps {depth.shape[2]}x{depth.shape[1]} do not have the clip's aspect ratio ({width}x{height})"
    return None


class Stylize(WanStage):
    pipeline_class = "WanVACEPipeline"
    version = "1"
    pair_columns = ('num_frames', 'width', 'height', 'stylize_seed')
    Params = StylizeParams
    reads = ("clip.mp4", "depth.npz", "style.png", "caption_edit", "fps")
    writes = ("src.mp4", "edit.mp4", "edit0.png", "mask.npz")
    columns = {**generation_columns("stylize"), "stylize_first_frame": pa.bool_()}
    params: StylizeParams

    @classmethod
    def reads_for(cls, params: StylizeParams) -> tuple[str, ...]:  # type: ignore[override]
        return cls.reads + (("stylized.png",) if params.first_frame == "stylized" else ())

    def process_one(self, sample: Sample) -> Result:
        p, sid = self.params, sample.sample_id
        caption = sample.columns.get("caption_edit")
        if not isinstance(caption, str) or not caption.strip():
            return Result.filtered(sid, "no caption_edit")
        clip = sample.read("clip.mp4")
        try:
            frames = self.decode(clip)
            depth = read_npz(sample.read("depth.npz"))["depth"]
        except (VideoError, KeyError, ValueError, OSError) as exc:
            return Result.failed(sid, f"cannot read the clip or depth.npz: {exc}")
        if problem := depth_mismatch(depth, frames.shape[:3]):
            return Result.failed(sid, problem)
        if len(frames) < p.num_frames:
            return Result.filtered(sid, f"clip has {len(frames)} frames, num_frames is {p.num_frames}")
        try:
            style = read_rgb(sample.read("style.png"), "style.png")
        except ImageError as exc:
            return Result.failed(sid, str(exc))
        first: np.ndarray | None = None
        if p.first_frame == "stylized":
            try:
                first = self._stylized_first_frame(sample, frames.shape[2], frames.shape[1])
            except ImageError as exc:
                return Result.failed(sid, str(exc))

        n, w, h = p.num_frames, p.width, p.height
        frames, unchanged = self.fit_clip(frames)
        video = depth_frames(depth[:n], w, h)
        vace_mask = None
        if first is not None:
            video[0] = first
            vace_mask = np.full((n, h, w), 255, np.uint8)
            vace_mask[0] = 0  # black: keep frame 0

        seed = sample_seed(p.seed, sid)
        output = self._generate(video, vace_mask, style, caption, seed)
        try:
            edit = to_uint8(output, frames.shape)
        except ValueError as exc:
            return Result.failed(sid, str(exc))

        everything = np.full((n, h, w), 255, np.uint8)
        files = self.pair_files(clip, unchanged, frames, edit, everything, float(sample.columns["fps"]))
        return Result.ok(sid, files, num_frames=n, width=w, height=h, stylize_seed=seed,
                         stylize_steps=p.num_inference_steps, stylize_first_frame=first is not None)

    def _stylized_first_frame(self, sample: Sample, clip_width: int, clip_height: int) -> np.ndarray | None:
        """The sample's ``stylized.png`` at the output size, or ``None`` if it has none. It is brought to the clip's
        size first (as animate brought ``content.png``) and then to the output size like the clip's frames, so it
        stays aligned with frame 0 when the two sizes' aspect ratios differ (1280x720 vs 832x480)."""
        try:
            data = sample.read("stylized.png")
        except KeyError:
            return None
        image = resize_center_crop(read_rgb(data, "stylized.png"), clip_width, clip_height)
        return resize_center_crop(image, self.params.width, self.params.height)

    def _generate(self, video: np.ndarray, mask: np.ndarray | None, style: np.ndarray, prompt: str, seed: int) -> Any:
        """The pipeline's raw ``np`` output for one clip (``mask`` white = regenerate; ``None``: all of it)."""
        from PIL import Image

        p = self.params
        with self.model_call():
            return self.pipe(
                video=[Image.fromarray(f) for f in video],
                mask=None if mask is None else [Image.fromarray(m) for m in mask],
                reference_images=[Image.fromarray(style)], prompt=prompt, negative_prompt=p.negative_prompt,
                conditioning_scale=p.conditioning_scale, height=p.height, width=p.width, num_frames=p.num_frames,
                num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale,
                generator=generator(self.device, seed), output_type="np",
            ).frames
