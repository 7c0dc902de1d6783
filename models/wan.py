"""What every Wan 2.1 diffusers stage shares (inpaint and stylize: VACE; animate: I2V).

:class:`WanParams` holds the generation settings (size, frames, steps, guidance, seed, memory options),
:func:`load_pipeline` loads any Wan pipeline class with them, :func:`to_uint8` checks and converts its output,
and :func:`sample_seed` gives each sample its own stable noise seed.

The cost levers (``docs/performance.md``, "Diffusion cost levers") are params too: ``loras`` (adapters fused into
the transformer, with the step count and guidance they were distilled for), ``cache`` (a diffusers cache hook) and,
runtime only, ``compile`` and ``attention_backend``. Those that change the output enter the fingerprint; each one
added later is left out of it while off, so existing configs keep their fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from media.arrays import npz_bytes
from media.png import png_bytes
from media.video_io import ClipDecoder, encode_frames, resize_center_crop
from models.weights import TINY_PREFIX, ModelParams
from pipeline.stage import RUNTIME_ONLY, Params, Result, Sample, Stage
from stages.seeds import sample_key

log = logging.getLogger(__name__)

NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)
"""Wan's recommended negative prompt (English version of the one in the Wan 2.1 repository)."""


class LoraError(ValueError):
    """A configured LoRA cannot be loaded into the pipeline (raised by ``setup``, naming the param)."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""The file name diffusers saves and looks for first (``save_lora_weights``' default)."""
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SHA256: dict[tuple[str, int, int], str] = {}
"""sha256 of local LoRA files by (path, size, mtime): a graph is built often, a LoRA is hundreds of MB."""


def safetensors_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header; ``ValueError`` if it is not one."""
    header: Any = None
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if 2 <= length <= 100_000_000:
                header = json.loads(f.read(length))
    except (struct.error, ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (no valid header)")  # noqa: TRY004 - a config error
    return [name for name in header if name != "__metadata__"]


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


class LoraSpec(_Spec):
    """One LoRA adapter: where it comes from, its weight, and the sampling it was distilled for."""

    path: str = Field(description="Hugging Face repo id (owner/name), a local .safetensors file or a folder holding "
                      "one, or tiny:<arch> (a random LoRA for tiny:wan_vace / tiny:wan_i2v, for tests)")
    weight_name: str | None = Field(None, description="the .safetensors file inside a repo or folder (needed when "
                                    "it holds several, and for a repo with HF_HUB_OFFLINE=1)")
    revision: str | None = Field(None, description="git revision of a repo (pin a commit: it enters the fingerprint)")
    scale: float = Field(1.0, description="adapter weight (diffusers set_adapters); 0 leaves the model unchanged")
    steps: int | None = Field(None, ge=1, le=1000, description="the step count the LoRA was distilled for: the "
                              "stage's num_inference_steps when the config sets none")
    guidance_scale: float | None = Field(None, ge=0, description="the guidance it was distilled for (1.0: no CFG, one "
                                         "transformer forward a step): the stage's guidance_scale when the config "
                                         "sets none")

    @property
    def kind(self) -> Literal["tiny", "local", "hub"]:
        if self.path.startswith(TINY_PREFIX):
            return "tiny"
        if self.path.startswith(("/", "./", "../", "~")) or self.path.endswith(".safetensors") or \
                os.path.exists(self.path):
            return "local"
        return "hub"

    @model_validator(mode="after")
    def _where_it_is(self) -> LoraSpec:
        if self.kind == "tiny":
            from models.tiny.wan_lora import ARCHES

            arch = self.path.removeprefix(TINY_PREFIX)
            if arch not in ARCHES:
                raise ValueError(f"path: no tiny LoRA {arch!r}; tiny LoRAs: {', '.join(TINY_PREFIX + a for a in ARCHES)}")
        elif self.kind == "local":
            file = self.file()
            try:
                names = safetensors_names(file)
            except ValueError as exc:
                raise ValueError(f"path: {exc}") from None
            if not any("lora" in name for name in names):
                raise ValueError(f"path: {file} holds no LoRA tensors (no tensor name contains 'lora'; "
                                 f"{len(names)} tensors): a full checkpoint is not an adapter")
        elif not _HUB_ID.fullmatch(self.path):
            raise ValueError(f"path: {self.path!r} is neither an existing local file or folder nor a Hugging Face repo "
                             "id (owner/name)")
        if self.revision and self.kind != "hub":
            raise ValueError("revision: only for a Hugging Face repo (a local file is identified by its sha256)")
        return self

    def file(self) -> Path:
        """The local safetensors file (``kind == "local"``); ``ValueError`` naming what is wrong."""
        path = Path(self.path).expanduser()
        if path.is_dir():
            if self.weight_name:
                path = path / self.weight_name
            else:
                found = sorted(path.glob("*.safetensors"))
                if not found:
                    raise ValueError(f"path: folder {self.path} holds no .safetensors file")
                if len(found) > 1:
                    names = ", ".join(f.name for f in found)
                    raise ValueError(f"path: folder {self.path} holds several .safetensors files ({names}): set "
                                     "weight_name")
                path = found[0]
        elif self.weight_name:
            raise ValueError("weight_name: only for a repo or a folder (path names a file)")
        if not path.is_file():
            raise ValueError(f"path: no such file {path}")
        if path.suffix != ".safetensors":
            raise ValueError(f"path: {path} is not a .safetensors file (pickled .bin/.pt/.ckpt files can run code "
                             "when loaded: convert it to safetensors)")
        return path

    def source(self) -> tuple[str, dict[str, Any]]:
        """What ``load_lora_weights`` takes: the repo id, folder or file, and its keyword arguments."""
        if self.kind == "tiny":
            from models.tiny.wan_lora import ensure

            return str(ensure(self.path.removeprefix(TINY_PREFIX))), {"weight_name": LORA_WEIGHT_NAME}
        if self.kind == "local":
            file = self.file()
            return str(file.parent), {"weight_name": file.name}
        kwargs: dict[str, Any] = {"weight_name": self.weight_name}
        if self.revision:
            kwargs["revision"] = self.revision
        return self.path, kwargs

    def identity(self) -> dict[str, Any]:
        """What of the adapter enters the fingerprint: a repo's id and revision, a local file's sha256, a tiny LoRA's
        builder version (as :meth:`models.weights.ModelParams.model_identity` does for the base model)."""
        if self.kind == "tiny":
            from models.tiny.wan_lora import VERSION

            return {"lora": self.path, "tiny_builder": VERSION}
        if self.kind == "local":
            return {"lora": self.path, "sha256": file_sha256(self.file())}
        return {"lora": self.path, "revision": self.revision, "weight_name": self.weight_name}


class FirstBlockCache(_Spec):
    """diffusers' First Block Cache: every forward runs the first transformer block; when its output moved less than
    ``threshold`` (relative mean absolute change) since the last full forward, the other blocks are skipped and their
    last residual reused."""

    kind: Literal["first_block"]
    threshold: float = Field(0.05, gt=0, description="higher: more steps skipped, further from the full output")

    def config(self, steps: int) -> Any:
        from diffusers import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=self.threshold)


class MagCache(_Spec):
    """diffusers' MagCache: skips the blocks while the accumulated magnitude-ratio error stays under ``threshold``;
    needs the checkpoint's magnitude ratios (diffusers ships Flux's only: calibrate on real weights with diffusers'
    ``MagCacheConfig(calibrate=True)``)."""

    kind: Literal["magcache"]
    threshold: float = Field(0.06, gt=0)
    max_skip_steps: int = Field(3, ge=1, description="most consecutive steps skipped")
    retention_ratio: float = Field(0.2, ge=0, lt=1, description="fraction of the first steps never skipped")
    mag_ratios: list[float] = Field(min_length=2, description="the checkpoint's magnitude ratios per step "
                                    "(interpolated to num_inference_steps)")

    def config(self, steps: int) -> Any:
        from diffusers import MagCacheConfig

        return MagCacheConfig(threshold=self.threshold, max_skip_steps=self.max_skip_steps,
                              retention_ratio=self.retention_ratio, num_inference_steps=steps,
                              mag_ratios=list(self.mag_ratios))


class TaylorSeerCache(_Spec):
    """diffusers' TaylorSeer in its lite mode (diffusers' default module patterns match no Wan attention module, so
    the full mode would cache nothing): on a predicted step every block is skipped and the transformer's output
    projection is extrapolated from the last full steps by a Taylor series. Which steps run in full is fixed
    (:meth:`full_steps`), so its FLOPs are exact."""

    kind: Literal["taylorseer"]
    cache_interval: int = Field(5, ge=1, description="a full forward every this many steps after the first ones")
    disable_cache_before_step: int = Field(3, ge=1, description="the first steps all run in full")
    disable_cache_after_step: int | None = Field(None, ge=1, description="steps from this one on all run in full")
    max_order: int = Field(1, ge=0, le=4, description="order of the Taylor extrapolation")

    def config(self, steps: int) -> Any:
        import torch
        from diffusers import TaylorSeerCacheConfig

        return TaylorSeerCacheConfig(
            cache_interval=self.cache_interval, disable_cache_before_step=self.disable_cache_before_step,
            disable_cache_after_step=self.disable_cache_after_step, max_order=self.max_order,
            taylor_factors_dtype=torch.float32, use_lite_mode=True,
        )

    def full_steps(self, steps: int) -> int:
        """How many of ``steps`` denoising steps run the transformer's blocks (diffusers' schedule, per guidance
        branch)."""
        before, interval, after = self.disable_cache_before_step, self.cache_interval, self.disable_cache_after_step
        return sum(1 for s in range(steps) if s < before or (s - before - 1) % interval == 0
                   or (after is not None and s >= after))


CacheSpec = Annotated[FirstBlockCache | MagCache | TaylorSeerCache, Field(discriminator="kind")]
BLOCK_CACHES = ("first_block", "magcache")
"""Caches that skip the main blocks from the first block's hook on: wrong for VACE (``WanParams.control_hints``)."""
QUANTIZED_ATTENTION = re.compile(r"_?sage")
"""Attention backends that quantize (SageAttention: int8 QK, fp8/fp16 PV): they change the output, so they enter the
fingerprint; the exact kernels (flash, native, cudnn, xformers, ...) differ only in rounding and are runtime-only."""


class WanParams(ModelParams):
    """Generation settings of a Wan diffusers stage; each stage sets its own ``model`` default."""

    width: int = Field(832, ge=16, description="output width, a multiple of 16")
    height: int = Field(480, ge=16, description="output height, a multiple of 16")
    num_frames: int = Field(81, ge=1, description="frames generated (4k+1); longer clips are trimmed")
    num_inference_steps: int = Field(50, ge=1, le=1000)
    guidance_scale: float = Field(5.0, ge=0, description="classifier-free guidance (<= 1 turns it off)")
    negative_prompt: str = NEGATIVE_PROMPT
    flow_shift: float | None = Field(None, gt=0, description="scheduler shift; None keeps the checkpoint's "
                                     "(Wan: 3.0 for 480p, 5.0 for 720p)")
    seed: int = Field(0, description="run seed; each sample's noise seed is derived from it and the sample id")
    offload: Literal["none", "model", "group", "sequential"] = Field(
        "none", description="GPU memory, least saving first: model = enable_model_cpu_offload (one model on the GPU "
        "at a time), group = enable_group_offload (transformer blocks streamed in, overlapped with compute), "
        "sequential = enable_sequential_cpu_offload (every layer moved in when used; slowest)",
        json_schema_extra=RUNTIME_ONLY,
    )
    storage_dtype: Literal["float8_e4m3fn", "float8_e5m2"] | None = Field(
        None, description="keep the transformer's weights in this dtype and upcast each layer as it runs "
        "(diffusers' layerwise casting): half the weight memory of bfloat16, slightly different outputs",
    )
    attention_backend: str | None = Field(None, description="diffusers attention backend (e.g. flash, _flash_3, "
                                          "sage, native); None keeps the default. Runtime only, except the "
                                          "quantized sage* backends, which change the output")
    vae_tiling: bool = Field(
        False, description="tiled VAE encode/decode (less memory at large sizes)", json_schema_extra=RUNTIME_ONLY
    )
    crf: int = Field(18, ge=0, le=51, description="x264 constant rate factor of the written videos")
    preset: str = "veryfast"
    loras: list[LoraSpec] = Field(
        default_factory=list, description="LoRA adapters fused into the transformer at load, each with its scale "
        "(e.g. a distilled few-step LoRA with its steps and guidance_scale); a repo's id and revision, or a local "
        "file's sha256, enter the fingerprint",
    )
    cache: CacheSpec | None = Field(
        None, description="a diffusers cache hook that skips transformer blocks on some steps: {kind: first_block, "
        "threshold}, {kind: taylorseer, cache_interval, ...} or {kind: magcache, threshold, mag_ratios}; changes "
        "the output",
    )
    compile: bool = Field(
        False, description="torch.compile the transformer's repeated blocks (regional compilation): the first "
        "sample of an actor pays the compile time", json_schema_extra=RUNTIME_ONLY,
    )

    control_hints: ClassVar[bool] = False
    """The transformer adds VACE control hints between its blocks (inpaint, stylize): first_block and magcache
    caches are refused (see :meth:`_cache_fits_the_model`)."""

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16 (Wan's VAE stride 8 x patch 2), got {value}")
        return value

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int) -> int:
        if (value - 1) % 4:
            raise ValueError(f"must be 4k+1 (Wan's VAE compresses time by 4), e.g. 81, 49, 17; got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sampling_of_the_loras(cls, data: Any) -> Any:
        """A LoRA's declared ``steps``/``guidance_scale`` become the stage's when the config sets none: a preset names
        the adapter and the sampling it was distilled for together. Explicit values win (try 6 steps on a 4-step
        LoRA); LoRAs that declare different values need an explicit one."""
        if not isinstance(data, dict) or not isinstance(data.get("loras"), list):
            return data
        for param, declared_by in (("num_inference_steps", "steps"), ("guidance_scale", "guidance_scale")):
            if param in data:
                continue
            declared = {entry.get(declared_by) if isinstance(entry, dict) else getattr(entry, declared_by, None)
                        for entry in data["loras"]} - {None}
            if len(declared) > 1:
                raise ValueError(f"the loras declare different {declared_by} ({sorted(declared)}): set {param}")
            if declared:
                data = {**data, param: declared.pop()}
        return data

    @field_validator("cache")
    @classmethod
    def _cache_fits_the_model(cls, value: Any) -> Any:
        if value is not None and value.kind in BLOCK_CACHES and cls.control_hints:
            raise ValueError(
                f"{value.kind} is not usable with VACE in diffusers 0.42.1: its hooks skip the main blocks but the "
                "VACE transformer adds its control hints between them again, on top of a cached residual that already "
                "holds them (a cached step with unchanged inputs does not give the full forward's output); use "
                "{kind: taylorseer} or none"
            )
        return value

    def fingerprint_data(self) -> dict[str, Any]:
        # loras and cache came later: left out while off, so that existing configs keep their fingerprints; an exact
        # attention kernel changes speed only (runtime-only), a quantized one (sage*) changes the output
        data = super().fingerprint_data()
        for name in ("loras", "cache"):
            if not data.get(name):
                data.pop(name, None)
        if not (self.attention_backend and QUANTIZED_ATTENTION.match(self.attention_backend)):
            data["attention_backend"] = None
        return data

    def model_identity(self) -> dict[str, Any]:
        identity = super().model_identity()
        if self.loras:
            identity["loras"] = [lora.identity() for lora in self.loras]
        return identity

    def forwards_per_step(self) -> int:
        """Transformer forwards per denoising step: two with classifier-free guidance (guidance_scale > 1), else
        one (the diffusers Wan pipelines' rule)."""
        return 2 if self.guidance_scale > 1.0 else 1


def sample_seed(seed: int, sample_id: str) -> int:
    """The noise seed of one sample: stable across reruns and machines, different per sample, fits int64."""
    return sample_key(seed, sample_id) & (2**63 - 1)


def load_pipeline(pipeline_class: type, params: WanParams, float32: tuple[str, ...] = ("vae",)) -> tuple[Any, Any]:
    """``(pipe, device)``: ``pipeline_class.from_pretrained`` with ``params``' dtype (the ``float32`` components
    stay float32, as in Wan's own diffusers examples), scheduler shift, LoRAs (fused), attention backend, VAE tiling,
    storage dtype, cache hook, offloading and compilation applied, progress bar off."""
    import torch

    device = params.torch_device()
    dtype = {"default": params.torch_dtype(), **{name: torch.float32 for name in float32}}
    pipe = pipeline_class.from_pretrained(params.weights(), dtype=dtype, **params.pretrained_kwargs())
    if params.flow_shift is not None:
        pipe.scheduler = with_shift(pipe.scheduler, params.flow_shift)
    transformers = [model for model in (pipe.transformer, getattr(pipe, "transformer_2", None)) if model is not None]
    if params.loras and params.offload == "none":
        pipe.to(device)  # fuse on the device it runs on (a 14B fuse on CPU takes a while)
    fuse_loras(pipe, params.loras)
    if params.attention_backend:
        for model in transformers:
            if not hasattr(model, "set_attention_backend"):
                raise ValueError("attention_backend needs a diffusers version with set_attention_backend")
            model.set_attention_backend(params.attention_backend)
    if params.vae_tiling:
        pipe.vae.enable_tiling()
    if params.storage_dtype:
        for model in transformers:
            model.enable_layerwise_casting(storage_dtype=getattr(torch, params.storage_dtype), compute_dtype=model.dtype)
    if params.cache is not None:
        for model in transformers:
            model.enable_cache(params.cache.config(params.num_inference_steps))
    if params.offload != "none" and device.type != "cuda":
        log.info("%s: offload=%s ignored on %s", pipeline_class.__name__, params.offload, device)
        pipe.to(device)
    elif params.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif params.offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_type="block_level", num_blocks_per_group=1,
                                  use_stream=True)
    elif params.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if params.compile:
        for model in transformers:
            model.compile_repeated_blocks()
    pipe.set_progress_bar_config(disable=True)
    return pipe, device


def fuse_loras(pipe: Any, loras: Sequence[LoraSpec]) -> None:
    """Load each adapter through the pipeline's own ``load_lora_weights`` (safetensors only), weight them
    (``set_adapters``) and fuse them into the transformer's weights, then drop the LoRA layers: a step then costs what
    it cost without them (an unfused rank-64 LoRA adds a few % to every linear layer), and layerwise casting,
    offloading, cache hooks and compilation see a plain model. :class:`LoraError` names the param and what to do."""
    if not loras:
        return
    names = []
    for index, lora in enumerate(loras):
        name, where = f"lora{index}", f"loras.{index}.path {lora.path!r}"
        try:
            source, kwargs = lora.source()
            pipe.load_lora_weights(source, adapter_name=name, use_safetensors=True, **kwargs)
        except Exception as exc:  # the library's errors vary (OSError, ValueError, RuntimeError, hub errors)
            hint = (f"download it where the actors run (`hf download {lora.path}` with its weight_name and revision), "
                    "or give a local .safetensors file" if lora.kind == "hub" else
                    "it must be a LoRA of this model's architecture (diffusers/peft, kohya or original Wan format)")
            raise LoraError(f"{where}: cannot load it into {type(pipe).__name__}: {type(exc).__name__}: {exc}; "
                            f"{hint}") from exc
        if name not in pipe.get_list_adapters().get("transformer", []):
            raise LoraError(f"{where}: no layer of the transformer matched its tensors (a LoRA of another model?)")
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()


def generator(device: Any, seed: int) -> Any:
    import torch

    return torch.Generator(device).manual_seed(seed)


def to_uint8(video: Any, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The pipeline's ``np`` output (1, T, H, W, 3) floats in [0, 1] as uint8 frames; raises ``ValueError`` on
    an unexpected shape (e.g. a wrong number of frames) or non-finite values."""
    video = np.asarray(video)
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.shape != shape:
        raise ValueError(f"the pipeline returned frames of shape {video.shape}, expected {shape}")
    finite = np.isfinite(video)
    if not finite.all():
        raise ValueError(f"the pipeline returned non-finite values ({finite.size - int(finite.sum())} NaN or Inf "
                         f"of {finite.size})")
    return (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def with_shift(scheduler: Any, shift: float) -> Any:
    """The same scheduler with another flow shift (UniPC calls it ``flow_shift``, flow-match Euler ``shift``)."""
    for key in ("flow_shift", "shift"):
        if key in scheduler.config:
            return type(scheduler).from_config(scheduler.config, **{key: shift})
    raise ValueError(f"flow_shift: {type(scheduler).__name__} has no flow shift setting")


def generation_columns(prefix: str) -> dict[str, pa.DataType]:
    """The columns every Wan stage writes about what it generated: size, frames, ``<prefix>_seed`` and steps."""
    return {
        "num_frames": pa.int16(), "width": pa.int16(), "height": pa.int16(),
        f"{prefix}_seed": pa.int64(), f"{prefix}_steps": pa.int16(),
    }


class WanStage(Stage):
    """A stage around one Wan diffusers pipeline: loaded once per actor, one sample per batch (each clip is
    checkpointed as it finishes, so a killed actor loses at most one), model id and revision in the fingerprint."""

    pipeline_class: ClassVar[str] = "WanVACEPipeline"
    """The diffusers pipeline class name."""
    float32: ClassVar[tuple[str, ...]] = ("vae",)
    """Components kept in float32 whatever ``dtype`` says (as in Wan's own diffusers examples)."""
    batch_size = 1
    params: WanParams

    @classmethod
    def fingerprint_extra(cls, params: Params) -> dict[str, Any]:
        assert isinstance(params, WanParams)
        return params.model_identity()

    def setup(self) -> None:
        import diffusers

        self.pipe, self.device = load_pipeline(getattr(diffusers, self.pipeline_class), self.params, self.float32)
        self.decode = ClipDecoder()  # consecutive samples of one clip (fan-out) decode it once

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self.process_one(sample) for sample in samples]

    def process_one(self, sample: Sample) -> Result:
        raise NotImplementedError

    def fit_clip(self, frames: np.ndarray) -> tuple[np.ndarray, bool]:
        """The clip's first ``num_frames`` frames at the output size (``resize_center_crop``, the ingest geometry),
        and whether that left the clip as it was (its bytes can then be passed on as ``src.mp4``). Callers check
        that there are enough frames."""
        p = self.params
        unchanged = frames.shape[:3] == (p.num_frames, p.height, p.width)
        return np.stack([resize_center_crop(f, p.width, p.height) for f in frames[: p.num_frames]]), unchanged

    def pair_files(self, clip: bytes, unchanged: bool, frames: np.ndarray, edit: np.ndarray, masks: np.ndarray,
                   fps: float) -> dict[str, bytes]:
        """``src.mp4`` (the frames the model saw; the upstream clip's own bytes when ``unchanged``), ``edit.mp4``,
        ``edit0.png`` (the edit's first frame, lossless) and ``mask.npz`` (``masks``, uint8 0/255)."""
        p = self.params
        return {
            "src.mp4": clip if unchanged else encode_frames(frames, fps, crf=p.crf, preset=p.preset),
            "edit.mp4": encode_frames(edit, fps, crf=p.crf, preset=p.preset),
            "edit0.png": png_bytes(edit[0]),
            "mask.npz": npz_bytes(masks=masks),
        }
