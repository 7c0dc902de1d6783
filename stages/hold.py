"""Stand-in stages that hold their resources for a given time per sample: scheduling benchmarks and cluster
dry runs through the real runner, without models (``bench/bench_scheduling.py``).

``hold_source`` makes ``samples`` samples out of nothing; ``hold`` passes each sample on after holding its
actor for ``seconds`` (the stage's cost per sample, e.g. from a calibration table). Several fractional-GPU
actors placed on one GPU take turns: each sample takes an exclusive lock on the GPU's id (``lock_dir``) while
it holds, as kernels of models sharing a GPU would. Each row records when it held and on which GPU, so a
benchmark can compute how busy every GPU was.
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


COLUMNS = {"hold_start": pa.float64(), "hold_end": pa.float64(), "gpu_ids": pa.string()}


def _gpu_ids() -> list[str]:
    try:
        import ray

        return [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    except ImportError:
        return []


@contextmanager
def _gpus_locked(lock_dir: str | None, gpu_ids: list[str]) -> Iterator[None]:
    with ExitStack() as stack:
        for gpu in sorted(gpu_ids) if lock_dir else []:
            handle = stack.enter_context(open(os.path.join(lock_dir, f"gpu-{gpu}.lock"), "a"))  # type: ignore[arg-type]
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _hold(params: HoldParams, sample_id: str, gpu_ids: list[str]) -> Result:
    with _gpus_locked(params.lock_dir, gpu_ids):
        start = time.time()
        time.sleep(params.seconds)
        end = time.time()
    return Result.ok(sample_id, hold_start=start, hold_end=end, gpu_ids=",".join(gpu_ids))


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
