"""Inpaint: regenerate the masked region of a clip with Wan VACE (diffusers ``WanVACEPipeline``).

Per sample (``<clip>-swap`` / ``<clip>-removal``) the clip's first ``num_frames`` frames and the track stage's
``edit`` mask are brought to ``width`` x ``height`` (``video_io.resize_center_crop``, the ingest geometry: a plain
resize when the aspect ratios match; masks nearest-neighbour), and VACE regenerates the white mask region from
``inpaint_prompt`` (the replacement for a swap, the background for a removal). Outputs, all at the output size:
``src.mp4`` (the frames the model saw; ingest's own bytes when nothing was resized or trimmed), ``edit.mp4``,
``edit0.png`` (its first frame, lossless) and ``mask.npz`` (``masks``: uint8 0/255, T x H x W).

The noise seed is derived from ``seed`` and the sample id, so a rerun of a sample starts from the same noise
(and, on the same machine and software, gives the same frames). A clip shorter than ``num_frames`` and a mask
that is empty at the output size are ``filtered``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from media.arrays import read_npz
from media.errors import VideoError
from media.video_io import resize_center_crop
from models.wan import WanParams, WanStage, generation_columns, generator, sample_seed, to_uint8
from pipeline.stage import Result, Sample
from stages.plan import TASKS


class InpaintParams(WanParams):
    model: str = Field("Wan-AI/Wan2.1-VACE-14B-diffusers", description="a WanVACEPipeline checkpoint or tiny:wan_vace")
    control_hints = True  # VACE: no first_block/magcache cache (models.wan.WanParams)


def fit_masks(masks: np.ndarray, width: int, height: int, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` masks at ``width`` x ``height`` (nearest-neighbour, re-thresholded to 0/255), in the
    frames' crop geometry."""
    binary = np.where(masks[:num_frames] > 127, 255, 0).astype(np.uint8)
    return np.stack([resize_center_crop(m, width, height, nearest=True) for m in binary])


class Inpaint(WanStage):
    pipeline_class = "WanVACEPipeline"
    version = "1"
    pair_columns = ('num_frames', 'width', 'height', 'inpaint_seed')
    Params = InpaintParams
    reads = ("clip.mp4", "track_masks.npz", "task", "inpaint_prompt", "fps")
    writes = ("src.mp4", "edit.mp4", "edit0.png", "mask.npz")
    columns = generation_columns("inpaint")
    params: InpaintParams

    def process_one(self, sample: Sample) -> Result:
        p, sid = self.params, sample.sample_id
        task, prompt = sample.columns.get("task"), sample.columns.get("inpaint_prompt")
        if task not in TASKS:
            return Result.filtered(sid, f"task {task!r} is not one of {', '.join(TASKS)}")
        if not isinstance(prompt, str) or not prompt.strip():
            return Result.filtered(sid, "no inpaint_prompt")
        clip = sample.read("clip.mp4")
        try:
            frames = self.decode(clip)
            masks = read_npz(sample.read("track_masks.npz"))["edit"]
        except (VideoError, KeyError, ValueError, OSError) as exc:
            return Result.failed(sid, f"cannot read the clip or track_masks.npz: {exc}")
        if masks.shape != frames.shape[:3]:
            return Result.failed(sid, f"edit mask {masks.shape} does not match the clip {frames.shape[:3]}")
        if len(frames) < p.num_frames:
            return Result.filtered(sid, f"clip has {len(frames)} frames, num_frames is {p.num_frames}")
        frames, unchanged = self.fit_clip(frames)
        masks = fit_masks(masks, p.width, p.height, p.num_frames)
        if not masks.any():
            size = f"{p.width}x{p.height}"
            return Result.filtered(sid, f"edit mask is empty in the first {p.num_frames} frames at {size}")

        seed = sample_seed(p.seed, sid)
        output = self._generate(frames, masks, prompt, seed)
        try:
            edit = to_uint8(output, frames.shape)
        except ValueError as exc:
            return Result.failed(sid, str(exc))

        files = self.pair_files(clip, unchanged, frames, edit, masks, float(sample.columns["fps"]))
        return Result.ok(sid, files, num_frames=p.num_frames, width=p.width, height=p.height, inpaint_seed=seed,
                         inpaint_steps=p.num_inference_steps)

    def _generate(self, frames: np.ndarray, masks: np.ndarray, prompt: str, seed: int) -> Any:
        """The pipeline's raw ``np`` output for one clip (white mask pixels are regenerated)."""
        from PIL import Image

        p = self.params
        video = [Image.fromarray(f) for f in frames]
        mask = [Image.fromarray(m) for m in masks]  # 2-D uint8: mode L
        with self.model_call():
            return self.pipe(
                video=video, mask=mask, prompt=prompt, negative_prompt=p.negative_prompt, height=p.height,
                width=p.width, num_frames=p.num_frames, num_inference_steps=p.num_inference_steps,
                guidance_scale=p.guidance_scale, generator=generator(self.device, seed),
                output_type="np",
            ).frames

