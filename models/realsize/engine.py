"""Shape-only execution: a real-size model with its weights on the meta device, run by the stage's own code.

Inside :class:`ShapeOnly` every model built by :mod:`models.realsize.folders` holds meta tensors (shape and dtype,
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

:mod:`models.realsize.counting` counts what runs under these rules (FLOPs, the activation peak);
:mod:`models.realsize.replay` answers repeats of stateless model calls from their first run.
"""

from __future__ import annotations

import math
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
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


def tensors_in(value: Any, out: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts (faster than a pytree flatten on every op)."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            tensors_in(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            tensors_in(item, out)
    return out


def is_meta(value: Any) -> bool:
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
        self.live: Any = None
        """Counts the bytes of what torch calls make, while set (``counting.LiveBytes``)."""
        self.counters: Any = None
        """The ``counting.Counters`` measuring now, if any."""
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
        return self.twin(value) if is_meta(value) else value

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
            if is_meta(args[0]):
                if self.depth > 0:
                    self.value_reads[_caller()] += 1
                args = (self.twin(args[0]), *args[1:])
            return func(*args, **kwargs)
        if func in _MOVES and args and isinstance(args[0], torch.Tensor):
            return self._move(func, args, kwargs)
        if func in _ASSERTS and is_meta(args[0]):
            self.value_reads[_caller()] += 1
            return torch.tensor(True)
        if self.depth > 0 and _names_meta(kwargs.get("device")) and _small_factory(func, args, kwargs):
            kwargs = {**kwargs, "device": torch.device("cpu")}
        tensors = tensors_in(kwargs, tensors_in(args, []))
        if self.depth == 0:
            if _names_meta(kwargs.get("device")):
                kwargs = {**kwargs, "device": torch.device("cpu")}
            if any(is_meta(t) for t in tensors):
                args, kwargs = tree_map(self._real, (args, kwargs))
            return func(*args, **kwargs)
        if any(is_meta(t) for t in tensors) and not all(is_meta(t) for t in tensors):
            args, kwargs = tree_map(lambda v: v.to(META) if isinstance(v, torch.Tensor) and not is_meta(v) else v,
                                    (args, kwargs))
        return func(*args, **kwargs)

    @staticmethod
    def _move(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if is_meta(args[0]):  # weights and activations stay on meta, whatever the device asked
            if func is torch.Tensor.to:
                args, kwargs = _without_meta_device(args, kwargs)
                return func(*args, **kwargs) if kwargs.get("dtype") is not None else args[0]
            if func is torch.Tensor.type and (args[1:] or kwargs):
                return func(*args, **kwargs)
            return args[0]
        if func is torch.Tensor.to and (any(_names_meta(a) or is_meta(a) for a in args[1:])
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
