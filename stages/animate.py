"""Animate: turn a content image into a clip with Wan2.1 image-to-video (diffusers ``WanImageToVideoPipeline``).

Per sample, ``content.png`` is brought to ``width`` x ``height`` (``video_io.resize_center_crop``: cover the
size keeping the aspect ratio, centre-crop the excess) and Wan I2V generates ``num_frames`` frames from it and
``animate_prompt`` (caption_content's cinematic caption). The outputs are those ingest writes for a real clip, so
the stages after it do not care where a clip came from: ``clip.mp4`` (H.264 at ``fps``) and ``frame0.png`` (the
first generated frame, lossless), and the columns ``num_frames``, ``fps``, ``width``, ``height``; plus
``animate_seed`` and ``animate_steps`` for provenance.

The noise seed is derived from ``seed`` and the sample id, so a rerun of a sample starts from the same noise.
One sample per ``process`` call, so a killed actor loses at most the clip in flight. An unreadable content image
and a generation with the wrong shape or non-finite values are ``failed``; an empty prompt is ``filtered``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from media.images import ImageError, read_rgb
from media.png import png_bytes
from media.video_io import encode_frames, resize_center_crop
from models.wan import WanParams, WanStage, generation_columns, generator, sample_seed, to_uint8
from pipeline.stage import Result, Sample


class AnimateParams(WanParams):
    model: str = Field("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
                       description="a WanImageToVideoPipeline checkpoint or tiny:wan_i2v")
    width: int = Field(1280, ge=16, description="output width, a multiple of 16")
    height: int = Field(720, ge=16, description="output height, a multiple of 16")
    num_frames: int = Field(81, ge=1, description="frames generated (4k+1)")
    flow_shift: float | None = Field(5.0, gt=0, description="scheduler shift: Wan's I2V uses 5.0 at 720p and 3.0 at "
                                     "480p; None keeps the checkpoint's (3.0)")
    fps: float = Field(16.0, gt=0, le=240, description="frame rate of the written clip (Wan generates 16 fps)")


class Animate(WanStage):
    pipeline_class = "WanImageToVideoPipeline"
    float32 = ("vae", "image_encoder")  # as in diffusers' Wan I2V examples
    version = "1"
    pair_columns = ('num_frames', 'width', 'height', 'animate_seed', 'fps')
    Params = AnimateParams
    reads = ("content.png", "animate_prompt")
    writes = ("clip.mp4", "frame0.png")
    columns = {**generation_columns("animate"), "fps": pa.float32()}
    params: AnimateParams

    def process_one(self, sample: Sample) -> Result:
        p, sid = self.params, sample.sample_id
        prompt = sample.columns.get("animate_prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return Result.filtered(sid, "no animate_prompt")
        try:
            content = read_rgb(sample.read("content.png"), "content.png")
        except ImageError as exc:
            return Result.failed(sid, str(exc))
        image = resize_center_crop(content, p.width, p.height)

        seed = sample_seed(p.seed, sid)
        output = self._generate(image, prompt, seed)
        try:
            frames = to_uint8(output, (p.num_frames, p.height, p.width, 3))
        except ValueError as exc:
            return Result.failed(sid, str(exc))

        files = {
            "clip.mp4": encode_frames(frames, p.fps, crf=p.crf, preset=p.preset),
            "frame0.png": png_bytes(frames[0]),
        }
        return Result.ok(sid, files, num_frames=p.num_frames, fps=p.fps, width=p.width, height=p.height,
                         animate_seed=seed, animate_steps=p.num_inference_steps)

    def _generate(self, image: np.ndarray, prompt: str, seed: int) -> Any:
        """The pipeline's raw ``np`` output for one clip starting from ``image`` (already at the output size)."""
        from PIL import Image

        p = self.params
        with self.model_call():
            return self.pipe(
                image=Image.fromarray(image), prompt=prompt, negative_prompt=p.negative_prompt, height=p.height,
                width=p.width, num_frames=p.num_frames, num_inference_steps=p.num_inference_steps,
                guidance_scale=p.guidance_scale, generator=generator(self.device, seed), output_type="np",
            ).frames
