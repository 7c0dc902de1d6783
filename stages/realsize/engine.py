"""Shape-only execution: a real-size model with its weights on the meta device, run by the stage's own code.

Inside :class:`ShapeOnly` every model built by :mod:`stages.realsize.folders` holds meta tensors (shape and dtype,
no memory, no values), and three rules let the stages' unmodified pre-processing, model calls and
post-processing run around it:

* **Inside a model's forward** (an ``nn.Module`` call) an operation that mixes meta and real tensors runs on
  the meta device (real inputs move there), so the model computes shapes only.
* **Outside every forward** the code sees what a model returned as a constant (:data:`STAND_IN`) of that shape and
  dtype: an operation on a meta tensor there runs for real on that "twin" (cached per tensor). Pipelines' schedulers,
  processors' post-processing and the stages' own checks and encoders therefore run on real arrays of the real
  size, and data-dependent code (``if torch.isfinite(x).all()``) takes the branch that constant takes.
* A meta tensor is never copied to another device (``.to("cpu")``, ``.cuda()`` keep it on meta, converting its
  dtype), and ``.to("meta")`` of a real tensor keeps it real: the stage's ``pipe.to(device)`` and
  ``inputs.to(model.device)`` work unchanged, and inputs keep their values (token ids, image grids). Factory
  calls outside a forward that name the meta device (a model's ``.device``) make real CPU tensors.

A value read *inside* a forward (``.item()``, ``bool()``, ``.tolist()`` on a meta tensor) also gets that constant,
and a ``torch._check`` of a meta condition passes; each such place is recorded (:attr:`ShapeOnly.value_reads`),
since control flow there may differ from a real run. Small tensors a model makes from Python values (shapes,
offsets, index lists: at most :data:`SMALL` elements) stay real, so such checks mostly see true values.

:class:`Counters` counts FLOPs (torch's formulas for matmuls, convolutions and attention) and the peak of
bytes held by tensors made during the measured code, meta and real alike (weights excluded): the activation
memory a GPU run needs for one clip, at the granularity of torch calls (a fused attention kernel holds its
output only, as flash attention does on a GPU).
"""

from __future__ import annotations

import copy
import json
import math
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakIdKeyDictionary

META = torch.device("meta")

_VALUE_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__, torch.Tensor.__int__,
    torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.__complex__, torch.Tensor.__array__,
}
_METADATA = {
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.stride, torch.Tensor.is_floating_point,
    torch.Tensor.element_size, torch.Tensor.__len__, torch.Tensor.is_contiguous, torch.Tensor.untyped_storage,
    torch.Tensor.storage_offset, torch.Tensor.is_complex, torch.Tensor.data_ptr, torch.Tensor.__repr__,
    torch.Tensor.__format__, torch.Tensor.__hash__, torch.Tensor.requires_grad_,
    torch._has_compatible_shallow_copy_type,
}
_DESCRIPTORS = {"__get__", "__set__", "__delete__"}
_MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.type}
_ASSERTS = {torch.Tensor._is_all_true, torch.Tensor._is_any_true}
"""What ``torch._check*`` reads of a condition tensor: a model's assertions about values are assumed to hold."""
SMALL = 1 << 16
"""A tensor made from Python values inside a model (shapes, indices, offsets) with at most this many elements stays
real, so code that checks or loops over it sees its values; larger ones (buffers, masks) go to the meta device."""
_SIZED_FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn, torch.randint}


def _tensors(value: Any, out: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts (faster than a pytree flatten on every op)."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensors(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _tensors(item, out)
    return out


def _is_meta(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


def _names_meta(device: Any) -> bool:
    return (isinstance(device, str) and device.startswith("meta")) or (
        isinstance(device, torch.device) and device.type == "meta")


def _target_dtype(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.dtype | None:
    """The dtype a ``Tensor.to(...)`` call asks for, if any (``to(dtype)``, ``to(device, dtype)``,
    ``to(other)``, ``dtype=``)."""
    if isinstance(kwargs.get("dtype"), torch.dtype):
        return kwargs["dtype"]
    for value in args[1:]:
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, torch.Tensor):
            return value.dtype
    return None


def _without_meta_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``Tensor.to`` arguments with any meta device (or a meta tensor giving one) dropped: dtype only."""
    dtype = _target_dtype(args, kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in ("device", "dtype")}
    return (args[0],), ({**rest, "dtype": dtype} if dtype is not None else rest)


STAND_IN = -4.0
"""The value every element of a model's floating-point output reads as outside the model (integers read 0). A
constant keeps the post-processing deterministic; it is negative and far from zero so that every detection and mask
threshold reads "nothing found" (sigmoid(-4) = 0.018) and normalisations stay defined (an all-zero embedding has no
direction)."""

_ACTIVE: list[ShapeOnly] = []


def active() -> ShapeOnly | None:
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def paused() -> Iterator[None]:
    """Plain torch while entered (building a model on the meta device must not be rewritten)."""
    mode = active()
    if mode is None:
        yield
        return
    mode.paused += 1
    try:
        yield
    finally:
        mode.paused -= 1


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
                return mode.recorded(key, _method, args, kwargs)
            with mode.model(_label):
                return mode.recorded(key, _method, args, kwargs)

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
        elif isinstance(value, _KEY_SCALARS):
            parts.append(value)
        else:
            raise _Uncacheable

    try:
        with paused():
            add(args)
            add(kwargs)
            config = getattr(model, "config", {})
            config = json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config), sort_keys=True,
                                default=str)
            dtypes = tuple(sorted({str(p.dtype) for p in model.parameters()}))
    except _Uncacheable:
        return None
    return (type(model).__name__, config, dtypes, method, tuple(parts))


class ShapeOnly(TorchFunctionMode):
    """The rules of shape-only execution (module docstring), active while entered.

    ``listeners`` hear ``(name, entering)`` when a top-level model call starts and ends (name: the module class, or
    ``Class.method`` for :data:`ENTRY_METHODS`)."""

    def __init__(self) -> None:
        super().__init__()
        self.value_reads: Counter[str] = Counter()
        """Places inside a model call that read values of a meta tensor (the stand-in was used), with how often."""
        self.depth = 0
        self.paused = 0
        self.finished_calls = 0
        """Top-level model calls that returned."""
        self.listeners: list[Any] = []
        self.live: LiveBytes | None = None
        """Counts the bytes of what torch calls make, while set (:class:`Counters`)."""
        self.counters: Any = None
        """The :class:`Counters` measuring now, if any."""
        self._twins = WeakIdKeyDictionary()
        self._hooks: list[Any] = []

    def __enter__(self) -> ShapeOnly:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._hooks = [register_module_forward_pre_hook(lambda module, args: self._enter(type(module).__name__)),
                       register_module_forward_hook(lambda module, args, out: self._leave(type(module).__name__),
                                                    always_call=True)]
        super().__enter__()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self)
        super().__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.depth = 0

    @contextmanager
    def model(self, name: str) -> Iterator[None]:
        self._enter(name)
        try:
            yield
        finally:
            self._leave(name)

    def _enter(self, name: str) -> None:
        if self.paused:
            return
        self.depth += 1
        if self.depth == 1:
            for listener in self.listeners:
                listener(name, True)

    def _leave(self, name: str) -> None:
        if self.paused:
            return
        self.depth -= 1
        if self.depth == 0:
            self.finished_calls += 1
            for listener in self.listeners:
                listener(name, False)

    def recorded(self, key: Any, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``method(*args, **kwargs)``, or, when ``key`` was recorded, its record replayed; records it while a
        :class:`Counters` measures (whose numbers the record holds)."""
        counters = self.counters
        if key is None or counters is None:
            return method(*args, **kwargs)
        record = _CALLS.get(key)
        if record is not None:
            template, flops, peak, reads = record
            counters.replay(flops, peak)
            self.value_reads.update(reads)
            return _rebuilt(template)
        flops, reads = counters.ops.flops, Counter(self.value_reads)
        entry = counters.live.open_window()
        out = method(*args, **kwargs)
        template = _template(out)
        if template is not None:
            _CALLS[key] = (template, counters.ops.flops - flops, counters.live.close_window(entry),
                           self.value_reads - reads)
        return out

    def twin(self, tensor: torch.Tensor) -> torch.Tensor:
        """The real tensor standing for a meta one outside the models (one per tensor), filled with
        :data:`STAND_IN`."""
        twin = self._twins.get(tensor)
        if twin is None:
            fill = STAND_IN if tensor.is_floating_point() or tensor.is_complex() else 0
            twin = torch.full(tensor.shape, fill, dtype=tensor.dtype)
            self._twins[tensor] = twin
        return twin

    def _real(self, value: Any) -> Any:
        return self.twin(value) if _is_meta(value) else value

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.paused or func in _METADATA or getattr(func, "__name__", "") in _DESCRIPTORS:
            return func(*args, **kwargs)
        result = self._handle(func, args, kwargs)
        if self.live is not None:
            self.live.add(result)
        return result

    def _handle(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if func in _VALUE_READS:
            if _is_meta(args[0]):
                if self.depth > 0:
                    self.value_reads[_caller()] += 1
                args = (self.twin(args[0]), *args[1:])
            return func(*args, **kwargs)
        if func in _MOVES and args and isinstance(args[0], torch.Tensor):
            return self._move(func, args, kwargs)
        if func in _ASSERTS and _is_meta(args[0]):
            self.value_reads[_caller()] += 1
            return torch.tensor(True)
        if self.depth > 0 and _names_meta(kwargs.get("device")) and _small_factory(func, args, kwargs):
            kwargs = {**kwargs, "device": torch.device("cpu")}
        tensors = _tensors(kwargs, _tensors(args, []))
        if self.depth == 0:
            if _names_meta(kwargs.get("device")):
                kwargs = {**kwargs, "device": torch.device("cpu")}
            if any(_is_meta(t) for t in tensors):
                args, kwargs = tree_map(self._real, (args, kwargs))
            return func(*args, **kwargs)
        if any(_is_meta(t) for t in tensors) and not all(_is_meta(t) for t in tensors):
            args, kwargs = tree_map(lambda v: v.to(META) if isinstance(v, torch.Tensor) and not _is_meta(v) else v,
                                    (args, kwargs))
        return func(*args, **kwargs)

    @staticmethod
    def _move(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _is_meta(args[0]):  # weights and activations stay on meta, whatever the device asked
            if func is torch.Tensor.to:
                args, kwargs = _without_meta_device(args, kwargs)
                return func(*args, **kwargs) if kwargs.get("dtype") is not None else args[0]
            if func is torch.Tensor.type and (args[1:] or kwargs):
                return func(*args, **kwargs)
            return args[0]
        if func is torch.Tensor.to and (any(_names_meta(a) or _is_meta(a) for a in args[1:])
                                        or _names_meta(kwargs.get("device"))):
            args, kwargs = _without_meta_device(args, kwargs)
        return func(*args, **kwargs)


def _small_factory(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a factory call makes a tensor of at most :data:`SMALL` elements from Python values."""
    if func in (torch.tensor, torch.as_tensor):
        return not isinstance(args[0], torch.Tensor) and len(tree_flatten(args[0])[0]) <= SMALL
    if func is torch.arange:
        bounds = [a for a in args if isinstance(a, (int, float))]
        if len(bounds) != len(args):
            return False
        start, end, step = (0, bounds[0], 1) if len(bounds) == 1 else (*bounds[:2], bounds[2] if len(bounds) > 2 else 1)
        return step != 0 and abs((end - start) / step) <= SMALL
    if func in _SIZED_FACTORIES:
        size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
        if func is torch.full:
            size = args[0]
        if func is torch.randint:
            size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), None) or kwargs.get("size")
        dims = [d for d in (size or ()) if isinstance(d, int)]
        return len(dims) == len(size or ()) and math.prod(dims) <= SMALL
    return False


def _caller() -> str:
    """``file:line`` of the library or stage code that read a value (the innermost frame outside this module)."""
    for frame in reversed(traceback.extract_stack(limit=12)[:-2]):
        if frame.filename != __file__ and not frame.filename.endswith(("torch/overrides.py", "torch/_tensor.py")):
            parts = frame.filename.split("site-packages/")
            return f"{parts[-1]}:{frame.lineno}"
    return "?"


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
    return _map_tensors(value, lambda leaf: leaf.empty() if isinstance(leaf, _TensorMeta) else leaf.tensor.clone())


class _RealKept:
    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor.clone()


def _recorded(tensor: torch.Tensor) -> _TensorMeta | _RealKept:
    if tensor.device.type == "meta":
        return _TensorMeta(tensor)
    if tensor.numel() > REAL_KEPT:
        raise _NotMeta
    return _RealKept(tensor)


def _map_tensors(value: Any, fn: Any) -> Any:
    """A copy of ``value`` (nested lists, tuples, dicts, model output dataclasses, plain objects such as a VAE's
    latent distribution) with ``fn`` applied to each tensor or recorded tensor in it."""
    if isinstance(value, (torch.Tensor, _TensorMeta, _RealKept)):
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


class LiveBytes:
    """Peak bytes of the tensors :class:`ShapeOnly` saw made while this is its ``live`` and still alive (storages,
    counted once however many views share them). Expired storages are swept only when the running total would set
    a new peak, so the peak is exact and the sweep is rare."""

    def __init__(self, where: Any = lambda: "") -> None:
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0
        self.where = where
        """Names the code running now (asked when a new peak is set)."""
        self.peak_in = ""
        self.windows: list[int] = []
        """Peaks of the recorded model calls in progress, innermost last."""

    def open_window(self) -> int:
        """Start watching the peak of a model call: the live bytes now (exact), to pass to :meth:`close_window`."""
        self._sweep()
        self.windows.append(self.current)
        return self.current

    def close_window(self, entry: int) -> int:
        """Bytes the call's peak held above what was live at its entry."""
        window_peak = self.windows.pop()
        if self.windows:
            self.windows[-1] = max(self.windows[-1], window_peak)
        return window_peak - entry

    def replay(self, above: int, where: str) -> None:
        """A replayed call held ``above`` bytes over what is live now at its peak."""
        self._sweep()
        if self.windows:
            self.windows[-1] = max(self.windows[-1], self.current + above)
        if self.current + above > self.peak:
            self.peak, self.peak_in = self.current + above, where

    def add(self, result: Any) -> None:
        """Count the storages of the tensors in ``result`` that are new."""
        for tensor in _tensors(result, []):
            self._add(tensor)

    def _add(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested: not expected in these models
            return
        ref = StorageWeakRef(storage)
        known = self.live.get(ref.cdata)
        if known is not None:
            if not known[0].expired():
                return
            self.current -= known[1]  # a freed storage's address, reused
        size = storage.nbytes()
        self.live[ref.cdata] = (ref, size)
        self.current += size
        if self.current > self.peak or (self.windows and self.current > self.windows[-1]):
            self._sweep()
            if self.windows and self.current > self.windows[-1]:
                self.windows[-1] = self.current
            if self.current > self.peak:
                self.peak, self.peak_in = self.current, self.where()

    def _sweep(self) -> None:
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]


class MetaOps(TorchDispatchMode):
    """FLOPs of every aten op (torch's formulas: matmuls, convolutions, attention), and a cache of what meta ops
    return: an op on meta tensors whose inputs have the same metadata as before gets fresh outputs of the same
    metadata without running again (its meta kernel, often a Python reference implementation, is the slow part of
    shape-only execution; a model's repeated layers hit the cache). Ops that return views or write their inputs
    always run."""

    def __init__(self, cache: dict[Any, Any]) -> None:
        super().__init__()
        self.flops = 0
        self.cache = cache

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        key = _cache_key(func, args, kwargs)
        if key is not None and key in self.cache:
            metas, flops = self.cache[key]
            self.flops += flops
            return _rebuild(metas)
        packet = func._overloadpacket
        before = self.flops
        out: Any = NotImplemented
        if packet not in flop_registry and func is not torch.ops.prim.device.default and (
                key is not None or any(_is_meta(t) for t in _tensors(args, []))):
            with self:  # the parts come back through this mode (a composite op's matmuls count)
                out = func.decompose(*args, **kwargs)
        if out is NotImplemented:
            out = func(*args, **kwargs)
            if packet in flop_registry:
                self.flops += int(flop_registry[packet](*args, **kwargs, out_val=out))
        if key is not None:
            self.cache[key] = (_meta_of(out), self.flops - before)
        return out


class _TensorMeta:
    """What a cached op output looked like (a pytree leaf)."""

    __slots__ = ("shape", "stride", "dtype")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.shape, self.stride, self.dtype = tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype

    def empty(self) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=META)


def _meta_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _TensorMeta(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_meta_of(item) for item in value)
    return value


def _rebuild(value: Any) -> Any:
    if isinstance(value, _TensorMeta):
        return value.empty()
    if isinstance(value, (list, tuple)):
        return type(value)(_rebuild(item) for item in value)
    return value


_KEY_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


class _Uncacheable(Exception):
    pass


def _key_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            raise _Uncacheable
        return (value.shape, value.stride(), value.dtype)
    if isinstance(value, _KEY_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return (type(value), *[_key_of(item) for item in value])
    raise _Uncacheable


def _cache_key(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A hashable description of a call on meta tensors whose outputs are new tensors, or ``None`` (not cacheable:
    real inputs, views, in-place or out= ops, outputs that are not plain tensors)."""
    cacheable = _CACHEABLE.get(func)
    if cacheable is None:
        schema = func._schema
        cacheable = not schema.is_mutable and all(r.alias_info is None and str(r.type) in ("Tensor", "Tensor[]")
                                                  for r in schema.returns)
        _CACHEABLE[func] = cacheable
    if not cacheable:
        return None
    try:
        key = (func, _key_of(args), *[(k, _key_of(v)) for k, v in kwargs.items()])
    except _Uncacheable:
        return None
    return key if any(isinstance(t, torch.Tensor) for t in _tensors(args, [])) else None


_CACHEABLE: dict[Any, bool] = {}


_OP_CACHE: dict[Any, Any] = {}
"""Meta op results by input metadata, shared by every measurement in this process (deterministic)."""


@dataclass
class Measured:
    flops: int = 0
    peak_bytes: int = 0
    by_module: dict[str, int] = field(default_factory=dict)
    """FLOPs per top-level module class (the models a stage calls), and ``other`` for the rest."""
    calls: Counter[str] = field(default_factory=Counter)
    """Top-level model calls per name."""
    peak_in: str = ""
    """The model call running when the activation peak was reached."""
    sequence: list[tuple[str, int]] = field(default_factory=list)
    """Every top-level model call in order, with its FLOPs."""


class Counters:
    """FLOPs and peak activation bytes of the code run while :meth:`measure` is entered, with FLOPs split by the
    top-level model call that spent them."""

    def __init__(self, shape_only: ShapeOnly) -> None:
        self.shape_only = shape_only
        self.ops: MetaOps
        self.live: LiveBytes

    def replay(self, flops: int, peak_above: int) -> None:
        """Count a recorded model call again (:data:`PURE_CALLS`)."""
        self.ops.flops += flops
        self.live.replay(peak_above, self.where())

    @contextmanager
    def measure(self) -> Iterator[Measured]:
        measured = Measured()
        ops = MetaOps(_OP_CACHE)
        started: list[tuple[str, int]] = []
        live = LiveBytes(lambda: started[-1][0] if started else "outside the models")

        def listener(name: str, entering: bool) -> None:
            if entering:
                started.append((name, ops.flops))
            elif started:
                name, before = started.pop()
                measured.by_module[name] = measured.by_module.get(name, 0) + ops.flops - before
                measured.calls[name] += 1
                measured.sequence.append((name, ops.flops - before))

        self.ops, self.live = ops, live
        self.where = lambda: started[-1][0] if started else "outside the models"
        self.shape_only.listeners.append(listener)
        self.shape_only.live, self.shape_only.counters = live, self
        try:
            with ops:
                yield measured
        finally:
            self.shape_only.live, self.shape_only.counters = None, None
            self.shape_only.listeners.remove(listener)
            measured.flops = ops.flops
            measured.peak_bytes, measured.peak_in = live.peak, live.peak_in
            measured.by_module["other"] = measured.flops - sum(measured.by_module.values())
