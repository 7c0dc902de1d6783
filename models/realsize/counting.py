"""What shape-only execution costs: FLOPs and the activation peak of the code run under
:class:`models.realsize.engine.ShapeOnly`.

:class:`Counters` counts FLOPs (torch's formulas for matmuls, convolutions and attention) and the peak of
bytes held by tensors made during the measured code, meta and real alike (weights excluded): the activation
memory a GPU run needs for one clip, at the granularity of torch calls (a fused attention kernel holds its
output only, as flash attention does on a GPU).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from models.realsize.engine import META, ShapeOnly, is_meta, tensors_in


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
        for tensor in tensors_in(result, []):
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
                key is not None or any(is_meta(t) for t in tensors_in(args, []))):
            with self:  # the parts come back through this mode (a composite op's matmuls count)
                out = func.decompose(*args, **kwargs)
        if out is NotImplemented:
            out = func(*args, **kwargs)
            if packet in flop_registry:
                self.flops += int(flop_registry[packet](*args, **kwargs, out_val=out))
        if key is not None:
            self.cache[key] = (_meta_of(out), self.flops - before)
        return out


class TensorMeta:
    """What a cached op output looked like (a pytree leaf)."""

    __slots__ = ("shape", "stride", "dtype")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.shape, self.stride, self.dtype = tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype

    def empty(self) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=META)


def _meta_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorMeta(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_meta_of(item) for item in value)
    return value


def _rebuild(value: Any) -> Any:
    if isinstance(value, TensorMeta):
        return value.empty()
    if isinstance(value, (list, tuple)):
        return type(value)(_rebuild(item) for item in value)
    return value


KEY_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


class Uncacheable(Exception):
    pass


def _key_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            raise Uncacheable
        return (value.shape, value.stride(), value.dtype)
    if isinstance(value, KEY_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return (type(value), *[_key_of(item) for item in value])
    raise Uncacheable


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
    except Uncacheable:
        return None
    return key if any(isinstance(t, torch.Tensor) for t in tensors_in(args, [])) else None


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
