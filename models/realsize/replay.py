"""Repeats of stateless model calls answered from their first run, under shape-only execution.

A model call whose outputs and costs follow from its inputs' shapes (and small inputs' values) alone
(:data:`PURE_CALLS`) runs once per process for each input signature; its repeats (a diffusion step's second
guidance pass, a second VAE encode of the same size, the same VAE in another stage, SAM2's image encoder on the
next frame) get fresh meta outputs of the recorded shapes, and the recorded FLOPs, activation peak and value reads
are counted again. :func:`as_model_call` also makes a model's ``encode``/``decode`` count as model calls.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import torch

from models.realsize.counting import KEY_SCALARS, TensorMeta, Uncacheable
from models.realsize.engine import SMALL, ShapeOnly, active, paused

ENTRY_METHODS = ("encode", "decode")
"""Model methods besides ``forward`` that are model calls (a VAE's encode/decode loop over their own modules)."""


PURE_CALLS: dict[str, tuple[str, ...]] = {
    "WanTransformer3DModel": ("forward",), "WanVACETransformer3DModel": ("forward",),
    "AutoencoderKLWan": ("encode", "decode"), "UMT5EncoderModel": ("forward",), "CLIPVisionModel": ("forward",),
    "Sam2VisionModel": ("forward",),
}
"""Model calls whose outputs and costs follow from their inputs' shapes (and small inputs' values) alone: no cache
or session object goes in, no state stays behind. A repeat of one already measured in this process (a diffusion
step's second guidance pass, a second VAE encode of the same size, the same VAE in another stage, SAM2's image
encoder on the next frame) is answered from
:data:`_CALLS`: fresh meta outputs of the recorded shapes, and the recorded FLOPs, activation peak and value reads."""


def as_model_call(model: Any) -> None:
    """Make ``model``'s :data:`ENTRY_METHODS` count as model calls while a :class:`ShapeOnly` is active, so the
    glue inside them (a VAE concatenating its chunks) also stays on the meta device; and answer repeats of its (and
    its submodules') :data:`PURE_CALLS` from the record of the first."""
    for module in model.modules() if isinstance(model, torch.nn.Module) else ():
        if module is not model and type(module).__name__ in PURE_CALLS:
            _memoized(module, PURE_CALLS[type(module).__name__], entry=False)
    _memoized(model, PURE_CALLS.get(type(model).__name__, ()), entry=True)


def _memoized(model: Any, pure: tuple[str, ...], *, entry: bool) -> None:
    """Wrap ``model``'s ``pure`` methods (and, for a top-level model, its :data:`ENTRY_METHODS`)."""
    for name in sorted({*(ENTRY_METHODS if entry else ()), *pure}):
        method = getattr(model, name, None)
        if not callable(method):
            continue
        label = f"{type(model).__name__}.{name}"

        def call(*args: Any, _method: Any = method, _label: str = label, _name: str = name, **kwargs: Any) -> Any:
            mode = active()
            if mode is None:
                return _method(*args, **kwargs)
            key = _call_key(model, _name, args, kwargs) if _name in pure else None
            if _name == "forward":  # Module.__call__ has already counted it as a model call
                return recorded(mode, key, _method, args, kwargs)
            with mode.model(_label):
                return recorded(mode, key, _method, args, kwargs)

        setattr(model, name, call)


_CALLS: dict[Any, Any] = {}
"""Recorded pure model calls of this process: key -> (output template, FLOPs, peak bytes above the live ones at
entry, value reads)."""


def _call_key(model: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What decides a pure call's outputs: the model's class, config and dtypes, the method, and its inputs
    (tensors by shape and dtype; small real ones also by value); ``None`` when an input is something else."""
    parts: list[Any] = []

    def add(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            small = value.device.type != "meta" and value.numel() <= SMALL
            parts.append((tuple(value.shape), value.dtype, value.device.type == "meta",
                          tuple(value.flatten().tolist()) if small else None))
        elif isinstance(value, (list, tuple)):
            parts.append(len(value))
            for item in value:
                add(item)
        elif isinstance(value, dict):
            for k in sorted(value):
                parts.append(k)
                add(value[k])
        elif isinstance(value, KEY_SCALARS):
            parts.append(value)
        else:
            raise Uncacheable

    try:
        with paused():
            add(args)
            add(kwargs)
            config = getattr(model, "config", {})
            config = json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config), sort_keys=True,
                                default=str)
            dtypes = tuple(sorted({str(p.dtype) for p in model.parameters()}))
    except Uncacheable:
        return None
    return (type(model).__name__, config, dtypes, method, tuple(parts))


def recorded(mode: ShapeOnly, key: Any, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``method(*args, **kwargs)``, or, when ``key`` was recorded, its record replayed; records it while a
    :class:`Counters` measures (whose numbers the record holds)."""
    counters = mode.counters
    if key is None or counters is None:
        return method(*args, **kwargs)
    record = _CALLS.get(key)
    if record is not None:
        template, flops, peak, reads = record
        counters.replay(flops, peak)
        mode.value_reads.update(reads)
        return _rebuilt(template)
    flops, reads = counters.ops.flops, Counter(mode.value_reads)
    entry = counters.live.open_window()
    out = method(*args, **kwargs)
    template = _template(out)
    if template is not None:
        _CALLS[key] = (template, counters.ops.flops - flops, counters.live.close_window(entry),
                       mode.value_reads - reads)
    return out


class _NotMeta(Exception):
    pass


REAL_KEPT = 1 << 24
"""Most elements of a real tensor a recorded model call may return (kept, and copied out on each replay): values it
computed from shapes, such as position encodings."""


def _template(value: Any) -> Any:
    """A copy of a model call's output with every meta tensor replaced by its metadata and small real ones copied,
    or ``None`` when it returns a large real tensor."""
    try:
        return _map_tensors(value, _recorded)
    except _NotMeta:
        return None


def _rebuilt(value: Any) -> Any:
    """A fresh output from a template (new meta tensors of the recorded metadata, copies of the kept real ones)."""
    return _map_tensors(value, lambda leaf: leaf.empty() if isinstance(leaf, TensorMeta) else leaf.tensor.clone())


class _RealKept:
    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor.clone()


def _recorded(tensor: torch.Tensor) -> TensorMeta | _RealKept:
    if tensor.device.type == "meta":
        return TensorMeta(tensor)
    if tensor.numel() > REAL_KEPT:
        raise _NotMeta
    return _RealKept(tensor)


def _map_tensors(value: Any, fn: Any) -> Any:
    """A copy of ``value`` (nested lists, tuples, dicts, model output dataclasses, plain objects such as a VAE's
    latent distribution) with ``fn`` applied to each tensor or recorded tensor in it."""
    if isinstance(value, (torch.Tensor, TensorMeta, _RealKept)):
        return fn(value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_map_tensors(item, fn) for item in value)
    if isinstance(value, dict):
        out = copy.copy(value)
        for key in list(value.keys()):
            out[key] = _map_tensors(value[key], fn)
        for key in getattr(value, "__dataclass_fields__", ()):  # ModelOutput / BaseOutput keep both views
            object.__setattr__(out, key, out.get(key, getattr(value, key)))
        return out
    if hasattr(value, "__dict__") and not isinstance(value, type):
        out = copy.copy(value)
        for key, item in vars(value).items():
            setattr(out, key, _map_tensors(item, fn))
        return out
    return value
