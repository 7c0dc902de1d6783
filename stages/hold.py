"""Stand-in stages that hold their resources for a given time per sample: scheduling benchmarks and cluster
dry runs through the real runner, without models (``bench/bench_scheduling.py``).

``hold_source`` makes ``samples`` samples out of nothing; ``hold`` passes each sample on after holding its
actor for ``seconds`` (the stage's cost per sample, e.g. from a calibration table). Actors placed on one GPU share
it as CUDA processes do, by time slices: a sample holds an exclusive lock on the GPU's id (``lock_dir``) for
:data:`TIME_SLICE_S` at a time until it has held it ``seconds`` in all, and waiters queue fairly, so two actors
on one GPU each go at half speed. Each row records when it started and ended, how long it held the GPU and on
which, so a benchmark can compute how busy every GPU was.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pyarrow as pa
from pydantic import Field

from pipeline.stage import RUNTIME_ONLY, Params, Result, Sample, Stage


class HoldParams(Params):
    seconds: float = Field(0.0, ge=0, description="seconds each sample holds the actor (and its GPUs)")
    lock_dir: str | None = Field(None, description="folder of per-GPU lock files; null: GPUs are not shared")
    shards_at_once: int = Field(
        1, ge=1, description="shards one actor holds for at once, each in its own thread (a vLLM stage's engine)",
        json_schema_extra=RUNTIME_ONLY,
    )


class HoldSourceParams(HoldParams):
    samples: int = Field(64, ge=1, description="samples to make")


COLUMNS = {"hold_start": pa.float64(), "hold_end": pa.float64(), "hold_seconds": pa.float64(), "gpu_ids": pa.string()}
TIME_SLICE_S = 0.01


def _gpu_ids() -> list[str]:
    try:
        import ray

        return [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    except ImportError:
        return []


@contextmanager
def _gpus_locked(lock_dir: str | None, gpu_ids: list[str]) -> Iterator[None]:
    """Hold each GPU's lock. A waiter first takes the GPU's gate and keeps it while it waits for the lock, so an
    actor that just let the GPU go queues behind it instead of taking the lock straight back (flock alone is not
    fair): actors sharing a GPU take turns slice by slice (``_hold``), as time-sliced CUDA processes do."""
    with ExitStack() as stack:
        for gpu in sorted(gpu_ids) if lock_dir else []:
            path = os.path.join(lock_dir, f"gpu-{gpu}")  # type: ignore[arg-type]
            with open(f"{path}.gate", "a") as gate:
                fcntl.flock(gate, fcntl.LOCK_EX)
                handle = stack.enter_context(open(f"{path}.lock", "a"))
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _hold(params: HoldParams, sample_id: str, gpu_ids: list[str]) -> Result:
    shared = bool(params.lock_dir and gpu_ids)
    start, held = None, 0.0
    while start is None or held < params.seconds:
        with _gpus_locked(params.lock_dir, gpu_ids):
            began = time.time()
            start = began if start is None else start
            time.sleep(min(TIME_SLICE_S, params.seconds - held) if shared else params.seconds)
            end = time.time()
        held += end - began
    return Result.ok(sample_id, hold_start=start, hold_end=end, hold_seconds=held, gpu_ids=",".join(gpu_ids))


class HoldSource(Stage):
    Params = HoldSourceParams
    is_source = True
    columns = COLUMNS
    params: HoldSourceParams

    @classmethod
    def list_sources(cls, inputs: Sequence[Any], params: Params) -> list[dict[str, Any]]:
        assert isinstance(params, HoldSourceParams)
        return [{"source_id": f"s{i:07d}"} for i in range(params.samples)]

    def setup(self) -> None:
        self.gpu_ids = _gpu_ids()

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [_hold(self.params, sample.sample_id, self.gpu_ids) for sample in samples]


class Hold(Stage):
    Params = HoldParams
    columns = COLUMNS
    params: HoldParams

    @classmethod
    def shards_at_once(cls, params: Params) -> int:
        assert isinstance(params, HoldParams)
        return params.shards_at_once

    def setup(self) -> None:
        self.gpu_ids = _gpu_ids()

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [_hold(self.params, sample.sample_id, self.gpu_ids) for sample in samples]
