"""The style track's captioners: Qwen2.5-VL (the plan stage's backends, vLLM or transformers) writes captions.

* ``caption_content`` looks at a content image and writes the *cinematic caption* the animate stage gives
  Wan I2V: what the image shows, how it could move, a camera move, all in one paragraph
  (``animate_prompt``). A content image flagged as mostly text or not a scene is ``filtered``.
* ``caption_style`` looks at the style image and the source clip (its first frame, and ``frames`` frames
  of the clip as a video when ``frames > 1``) and writes the style caption (``style_caption``), the source
  caption (``caption_src``), the stylized caption (``caption_edit``: the stylize stage's prompt) and the
  edit instruction; ``task`` is ``style``.

Both answer a versioned JSON schema (:class:`CinematicV1`, :class:`StyleV1`) through the shared structured
prompting (``models/prompting.py``): output constrained to the schema, one repair round, then ``failed``
with the raw answers in ``caption_raw``. Prompts: ``models/prompts/cinematic-v1.md`` and ``style-v1.md``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field

from media.images import read_rgb
from media.video_io import decode_frames
from models.prompting import Answer, PromptParams, StrictAnswer, VLMStage, bounded_text, chat_request
from models.vlm import Video, VLMRequest
from pipeline.stage import Result, Sample

Phrase = bounded_text(160)
Sentence = bounded_text(300)
Paragraph = bounded_text(800)


class ContentFlags(StrictAnswer):
    text_overlay: bool = Field(description="mostly text, a screenshot or a diagram, or large logos or watermarks")
    not_a_scene: bool = Field(description="not a picture of a scene: a collage, a blank or abstract image")


class CinematicV1(StrictAnswer):
    """How a still image could become a clip (the Wan I2V prompt)."""

    subject: Sentence = Field(description="what the image shows")
    motion: Sentence = Field(description="how the subjects and the scene could move")
    camera: Phrase = Field(description="a camera movement that suits the shot")
    caption: Paragraph = Field(description="one cinematic paragraph for the video model")
    flags: ContentFlags


class StyleV1(StrictAnswer):
    """The captions of one (source video, style image) pair."""

    style: Phrase = Field(description="the style image's style: medium, texture, palette, mood")
    caption_src: Sentence = Field(description="the video as it is")
    caption_edit: Paragraph = Field(description="the video as if made in the style (the video model's prompt)")
    instruction: Sentence = Field(description="imperative editing instruction")


CONTENT_FLAGS = tuple(ContentFlags.model_fields)
STYLE_TASK = "style"


def _image(sample: Sample, field: str) -> Image.Image:
    return Image.fromarray(read_rgb(sample.read(field), field))


Flag = Literal["text_overlay", "not_a_scene"]


class CaptionContentParams(PromptParams):
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Qwen2.5-VL checkpoint, folder or tiny:qwen2_5_vl")
    prompt: str = Field("cinematic-v1", description="packaged prompt name or an absolute .md path (actors read it)")
    max_new_tokens: int = Field(1024, ge=1)
    filter_flags: list[Flag] = Field(default_factory=lambda: list(CONTENT_FLAGS), description="flags that filter")


class CaptionContent(VLMStage):
    version = "1"
    pair_columns = ('prompt_version',)
    Params = CaptionContentParams
    reads = ("content.png",)
    writes = ("caption_content.json",)
    columns: ClassVar[dict[str, pa.DataType]] = {
        "animate_prompt": pa.string(), "caption_content": pa.string(), "prompt_version": pa.string(),
        "caption_raw": pa.string(),
    }
    params: CaptionContentParams

    @classmethod
    def answer_model_for(cls, params: PromptParams) -> type[CinematicV1]:
        return CinematicV1

    def request(self, sample: Sample) -> VLMRequest:
        image = _image(sample, "content.png")
        return chat_request(self.template, [{"type": "image"}], "an image", CinematicV1, images=(image,))

    def results(self, sample: Sample, answer: Answer[CinematicV1]) -> list[Result]:
        sid, version = sample.sample_id, self.template.version
        if answer.value is None:
            return [Result.failed(sid, answer.error or "no answer", caption_raw=answer.raw, prompt_version=version)]
        cinematic = answer.value
        raised = [flag for flag in self.params.filter_flags if getattr(cinematic.flags, flag)]
        if raised:
            return [Result.filtered(sid, f"captioner flagged the image: {', '.join(raised)}", prompt_version=version)]
        document = self.answer_document(answer.raw, answer.repaired, answer=cinematic.model_dump(mode="json"))
        return [Result.ok(
            sid, {"caption_content.json": document}, animate_prompt=cinematic.caption,
            caption_content=cinematic.subject, prompt_version=version,
        )]


class CaptionStyleParams(PromptParams):
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Qwen2.5-VL checkpoint, folder or tiny:qwen2_5_vl")
    prompt: str = Field("style-v1", description="packaged prompt name or an absolute .md path (actors read it)")
    max_new_tokens: int = Field(1024, ge=1)
    frames: int = Field(1, ge=1, le=64, description="1: the clip's first frame; N > 1: also N frames as a video")


class CaptionStyle(VLMStage):
    version = "1"
    pair_columns = ('task', 'instruction', 'caption_src', 'caption_edit', 'style_caption', 'prompt_version')
    Params = CaptionStyleParams
    reads = ("style.png", "frame0.png")
    writes = ("caption_style.json",)
    columns: ClassVar[dict[str, pa.DataType]] = {
        "task": pa.string(), "instruction": pa.string(), "caption_src": pa.string(), "caption_edit": pa.string(),
        "style_caption": pa.string(), "prompt_version": pa.string(), "caption_raw": pa.string(),
    }
    params: CaptionStyleParams

    @classmethod
    def answer_model_for(cls, params: PromptParams) -> type[StyleV1]:
        return StyleV1

    @classmethod
    def media_limits(cls, params: PromptParams) -> dict[str, int]:
        assert isinstance(params, CaptionStyleParams)
        return {"image": 2, "video": 1 if params.frames > 1 else 0}

    @classmethod
    def reads_for(cls, params: PromptParams) -> tuple[str, ...]:
        assert isinstance(params, CaptionStyleParams)
        return cls.reads + (("clip.mp4", "fps") if params.frames > 1 else ())

    def request(self, sample: Sample) -> VLMRequest:
        style, frame0 = _image(sample, "style.png"), _image(sample, "frame0.png")
        content: list[dict[str, Any]] = [{"type": "image"}, {"type": "image"}]
        inputs = "a style image, then the first frame of a video"
        videos: tuple[Video, ...] = ()
        if self.params.frames > 1:
            clip = decode_frames(sample.read("clip.mp4"))
            indices = sorted({int(i) for i in np.linspace(0, len(clip) - 1, self.params.frames).round()})
            videos = (Video(clip[indices], float(sample.columns["fps"]), tuple(indices), len(clip)),)
            content.append({"type": "video"})
            inputs += f", then {len(indices)} frames sampled evenly across the whole video"
        return chat_request(self.template, content, inputs, StyleV1, images=(style, frame0), videos=videos)

    def results(self, sample: Sample, answer: Answer[StyleV1]) -> list[Result]:
        sid, version = sample.sample_id, self.template.version
        if answer.value is None:
            return [Result.failed(sid, answer.error or "no answer", caption_raw=answer.raw, prompt_version=version)]
        style = answer.value
        document = self.answer_document(answer.raw, answer.repaired, answer=style.model_dump(mode="json"))
        return [Result.ok(
            sid, {"caption_style.json": document}, task=STYLE_TASK, instruction=style.instruction,
            caption_src=style.caption_src, caption_edit=style.caption_edit, style_caption=style.style,
            prompt_version=version,
        )]
