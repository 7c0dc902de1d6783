"""Real-size model folders without weights: the configurations of ``architectures.yaml`` written in the layout
``from_pretrained`` reads (``config.json``, processor and tokenizer files; ``model_index.json`` and one folder per
component for diffusers pipelines), so a stage's own loading code opens them unchanged inside
:func:`models.realsize.loading.built_from_config`.

Tokenizers are stand-ins (the tiny profile's: vocabulary files of the real checkpoints cannot be shipped);
image and video processors get the real sizes. The model config's special-token ids follow the stand-in
tokenizer (they index the same embedding table, so no shape changes). Folders are cached under
``$FFP_TINY_CACHE/../realsize`` keyed by a digest of their entry and of the code that writes them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from models.weights import TINY_PREFIX

ARCHITECTURES = Path(__file__).with_name("architectures.yaml")


class UnknownModel(ValueError):
    """A model id with no shipped configuration."""


@cache
def architectures() -> dict[str, dict[str, Any]]:
    """``architectures.yaml``: model id -> entry."""
    return yaml.safe_load(ARCHITECTURES.read_text())


def known_models() -> list[str]:
    return sorted(architectures())


def entry(model: str) -> dict[str, Any]:
    """The shipped configuration of ``model`` (a Hugging Face repo id); :class:`UnknownModel` names the known ones."""
    try:
        return copy.deepcopy(architectures()[model])
    except KeyError:
        raise UnknownModel(
            f"no real-size configuration for model {model!r}; known: {', '.join(known_models())} "
            f"(add it to {ARCHITECTURES.name}, or use tiny:<arch>)"
        ) from None


def folder_for(model: str, overrides: dict[str, Any] | None = None) -> Path:
    """A folder ``from_pretrained`` opens for ``model``: the tiny model's own for ``tiny:<arch>``, else the real-size
    configuration's (written once per machine), with ``overrides`` merged into its ``config`` (the GPU bench runs a
    model too large for one GPU with fewer layers)."""
    if model.startswith(TINY_PREFIX):
        from models.tiny import ensure

        return ensure(model.removeprefix(TINY_PREFIX))
    spec = entry(model)
    if overrides:
        spec["config"] = _merge(spec["config"], overrides)
    digest = hashlib.sha256(json.dumps([_code_digest(), spec], sort_keys=True).encode()).hexdigest()[:12]
    target = cache_root() / f"{model.replace('/', '--')}-{digest}"
    if (target / ".complete").exists():
        return target
    temporary = cache_root() / f".build-{uuid.uuid4().hex}"
    try:
        temporary.mkdir(parents=True)
        (_pipeline if "pipeline" in spec else _model)(temporary, spec)
        (temporary / ".complete").write_text(model)
        try:
            os.rename(temporary, target)
        except OSError:  # another process finished first
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


@cache
def _code_digest() -> str:
    """The code that writes the folders: this module and the tiny builders whose tokenizers it reuses, and the Python
    version (the VLMs' stand-in tokenizer is trained on its standard library's docstrings: :func:`english_corpus`)."""
    import platform

    tiny = Path(__file__).parents[1] / "tiny"
    code = b"".join(p.read_bytes() for p in [Path(__file__), *sorted(tiny.glob("*.py"))])
    return hashlib.sha256(code + platform.python_version().encode()).hexdigest()


def cache_root() -> Path:
    from models.tiny import cache_root as tiny_root

    return tiny_root().parent / "realsize"


# Writing folders ---------------------------------------------------------------------------------------------------


def _pipeline(folder: Path, spec: dict[str, Any]) -> None:
    import diffusers

    index: dict[str, Any] = {"_class_name": spec["pipeline"], "_diffusers_version": diffusers.__version__}
    for name, component in spec["components"].items():
        sub = folder / name
        if "stand_in" in component:
            library, class_name, _ = STAND_INS[component["stand_in"]](sub, component)
        elif component["library"] == "diffusers":
            if component["class"].endswith("Scheduler"):
                getattr(diffusers, component["class"]).from_config(component["config"]).save_config(sub)
            else:
                sub.mkdir(parents=True)
                (sub / "config.json").write_text(json.dumps({"_class_name": component["class"], **component["config"]}))
            library, class_name = "diffusers", component["class"]
        else:
            _transformers_config(component["class"], component["config"]).save_pretrained(sub)
            library, class_name = "transformers", component["class"]
        index[name] = [library, class_name]
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))


def _transformers_config(class_name: str, values: dict[str, Any]) -> Any:
    import transformers

    config_class = getattr(transformers, class_name).config_class
    return config_class(**values)


def _model(folder: Path, spec: dict[str, Any]) -> None:
    processor = spec.get("processor") or {}
    overrides = STAND_INS[processor["stand_in"]](folder, processor)[2] if processor else {}
    values = _merge(spec["config"], overrides)
    _transformers_config(spec["class"], values).save_pretrained(folder)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


# Stand-in tokenizers and processors: (folder, spec) -> (library, class, config overrides) ------------------------


def _wan_t5(folder: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from transformers import T5Tokenizer

    from models.tiny.wan_vace import vocabulary

    T5Tokenizer(vocab=vocabulary(), extra_ids=100, model_max_length=512).save_pretrained(folder)
    return "transformers", "T5Tokenizer", {}


def _clip_image_224(folder: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor().save_pretrained(folder)
    return "transformers", "CLIPImageProcessor", {}


def _qwen2_5_vl(folder: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from transformers import GenerationConfig, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from models.tiny.qwen2_5_vl import CHAT_TEMPLATE, SPECIAL_TOKENS

    tokenizer = english_qwen_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    image, video = spec["image"], spec["video"]
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size={"shortest_edge": image["min_pixels"],
                                                    "longest_edge": image["max_pixels"]}),
        video_processor=Qwen2VLVideoProcessor(size={"shortest_edge": video["min_pixels"],
                                                    "longest_edge": video["max_pixels"]}),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    ).save_pretrained(folder)
    GenerationConfig(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
                     bos_token_id=ids["<|endoftext|>"]).save_pretrained(folder)
    return "transformers", "Qwen2_5_VLProcessor", {
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "text_config": {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                        "pad_token_id": ids["<|endoftext|>"]},
    }


def _grounding_dino(folder: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from transformers import BertTokenizer, GroundingDinoImageProcessor, GroundingDinoProcessor

    from models.tiny.grounding_dino import vocabulary

    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size=dict(spec["image"])),
        tokenizer=BertTokenizer(vocab=vocabulary(), do_lower_case=True, model_max_length=512),
    ).save_pretrained(folder)
    return "transformers", "GroundingDinoProcessor", {}


def _sam2_video(folder: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from transformers import Sam2VideoProcessor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    size = dict(spec["image"])
    Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=size, mask_size={"height": 256, "width": 256}),
        video_processor=Sam2VideoVideoProcessor(size=size), target_size=size["height"],
    ).save_pretrained(folder)
    return "transformers", "Sam2VideoProcessor", {}


ENGLISH_VOCAB = 32768


@cache
def english_qwen_tokenizer() -> Any:
    """The VLMs' stand-in tokenizer: Qwen2's (special tokens, chat template) with a byte-level BPE of
    ``ENGLISH_VOCAB`` tokens trained on :func:`english_corpus` (built once per process: about 3 s)."""
    from models.tiny.qwen2_5_vl import _tokenizer

    return _tokenizer(english_corpus(), vocab_size=ENGLISH_VOCAB)


def english_corpus() -> list[str]:
    """English prose to train the VLMs' stand-in tokenizer on: the triple-quoted strings of Python's standard library
    and its documentation topics (``pydoc_data``), about 2.7 MB. A 32K byte-level BPE trained on it gives 3.5-3.8
    characters per token on ffp's prompts, near what a large production vocabulary gives on English (the tiny
    profile's 512-token one gives 1.5-1.9, which would double a prompt's text tokens). The text differs between
    Python versions (3.12's gives the planner's prompt 0.5 % more tokens than 3.11's), so the Python version is
    part of the folders' and the checks' cache keys."""
    import re
    import sysconfig
    from pydoc_data.topics import topics

    strings = re.compile(r'"""(.*?)"""', re.DOTALL)
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" not in path.parent.name and not path.name.startswith("test"):
            texts += [text for text in strings.findall(path.read_text(encoding="utf-8", errors="ignore"))
                      if len(text) > 40]
    return texts + list(topics.values())


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _depth_anything(folder: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from transformers import DPTImageProcessor

    DPTImageProcessor(
        do_resize=True, size=dict(spec["image"]), keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        do_pad=False,
    ).save_pretrained(folder)
    return "transformers", "DPTImageProcessor", {}


def _clip(folder: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from transformers import CLIPImageProcessor, CLIPProcessor

    from models.tiny.clip import _tokenizer

    tokenizer = _tokenizer()
    side, crop = spec["image"]["shortest_edge"], spec["image"]["crop"]
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": side},
                                                     crop_size={"height": crop, "width": crop}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return "transformers", "CLIPProcessor", {"text_config": {
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id}}


def _dinov2(folder: Path, spec: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from transformers import BitImageProcessor

    side, crop = spec["image"]["shortest_edge"], spec["image"]["crop"]
    BitImageProcessor(
        do_resize=True, size={"shortest_edge": side}, resample=3, do_center_crop=True,
        crop_size={"height": crop, "width": crop}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True,
    ).save_pretrained(folder)
    return "transformers", "BitImageProcessor", {}


STAND_INS: dict[str, Callable[[Path, dict[str, Any]], tuple[str, str, dict[str, Any]]]] = {
    "wan_t5": _wan_t5, "clip_image_224": _clip_image_224, "qwen2_5_vl": _qwen2_5_vl,
    "grounding_dino": _grounding_dino, "sam2_video": _sam2_video, "depth_anything": _depth_anything, "clip": _clip,
    "dinov2": _dinov2,
}
