"""How many actors each stage gets: in proportion to its remaining work, within the cluster's resources.

The driver calls :func:`plan_actors` whenever it schedules. A stage's remaining work is its shards not yet
committed times its estimated seconds per shard (measured in this run once a shard of it has finished,
before that from a calibration file, else a common default). Every stage with work left gets one actor,
then one actor at a time goes to the stage that would take longest to finish with what it has, while the
actor's resources fit. The pools are sized so that all stages finish together as nearly as the cluster
allows: the slowest stage gets the most, fast stages get few and cannot starve it (cosmos-curate balances
its pools the same way, from measured throughput).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml

DEFAULT_SECONDS_PER_SAMPLE = 1.0


@dataclass(frozen=True)
class Demand:
    stage: str
    per_actor: Mapping[str, float]
    """Resources one actor holds, e.g. ``{"CPU": 2, "GPU": 0.25}`` (tensor-parallel bundles included)."""
    max_actors: int
    remaining_shards: int
    """Shards of the stage not committed yet, ready to run or not."""
    seconds_per_shard: float
    ready: bool = False
    """It has a shard that could start now: such stages get their first actor before the others."""


def fits(need: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(amount <= free.get(kind, 0.0) + 1e-9 for kind, amount in need.items() if amount > 0)


def take(free: dict[str, float], need: Mapping[str, float], times: int = 1) -> None:
    for kind, amount in need.items():
        free[kind] = free.get(kind, 0.0) - amount * times


def plan_actors(demands: Sequence[Demand], capacity: Mapping[str, float]) -> dict[str, int]:
    """Actor counts per stage (0 for a stage without work left, or none that fits) that share ``capacity`` in
    proportion to each stage's remaining work; never more actors than a stage's ``max_actors`` or its
    remaining shards. ``demands`` come in pipeline order."""
    free = dict(capacity)
    counts = {d.stage: 0 for d in demands}
    working = [d for d in demands if d.remaining_shards > 0]
    # one each first, stages with a shard ready before the rest (later stages first: they drain the queues)
    for demand in sorted(working, key=lambda d: not d.ready):
        if fits(demand.per_actor, free):
            counts[demand.stage] = 1
            take(free, demand.per_actor)

    def time_to_finish(d: Demand) -> float:
        return d.remaining_shards * d.seconds_per_shard / max(1, counts[d.stage])

    while working:
        slowest = max(working, key=time_to_finish)
        if not (0 < counts[slowest.stage] < min(slowest.max_actors, slowest.remaining_shards)
                and fits(slowest.per_actor, free)):
            return counts  # more actors elsewhere would not finish the run sooner, only hold resources
        counts[slowest.stage] += 1
        take(free, slowest.per_actor)
    return counts


@dataclass
class CostModel:
    """Seconds per sample per stage: measured in this run where a stage has finished shards, else from the
    calibration file, else the default."""

    calibrated: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    processed: dict[str, int] = field(default_factory=dict)

    def record(self, stage: str, seconds: float, processed: int) -> None:
        """A committed shard try: ``seconds`` spent on it, ``processed`` items made (not reused)."""
        if processed > 0:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.processed[stage] = self.processed.get(stage, 0) + processed

    def seconds_per_item(self, stage: str, stage_type: str) -> float:
        if self.processed.get(stage):
            return self.seconds[stage] / self.processed[stage]
        for key in (stage, stage_type):
            if key in self.calibrated:
                return self.calibrated[key]
        return DEFAULT_SECONDS_PER_SAMPLE


def read_calibration_document(path: str) -> object:
    """The parsed calibration file (JSON or YAML, any fsspec URL), as ``ffp calibrate`` writes it."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(path)
    with fs.open(root, "rb") as handle:
        text = handle.read().decode()
    return json.loads(text) if root.endswith(".json") else yaml.safe_load(text)


def read_calibration(path: str) -> dict[str, float]:
    """``{stage name or type: seconds per sample}`` from a calibration file's ``seconds_per_sample`` mapping."""
    return seconds_per_sample(read_calibration_document(path), path)


def seconds_per_sample(document: object, path: str) -> dict[str, float]:
    """The ``seconds_per_sample`` mapping of a parsed calibration file (``path`` names it in errors)."""
    table = document.get("seconds_per_sample") if isinstance(document, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in table.values()):
        raise ValueError(f"{path}: expected a mapping 'seconds_per_sample' of stage -> seconds (>= 0)")
    return {str(k): float(v) for k, v in table.items()}


def items_per_clip(document: object) -> dict[str, float]:
    """The optional ``items_per_clip`` mapping (a stage's fan-out) of a parsed calibration file."""
    table = document.get("items_per_clip") if isinstance(document, dict) else None
    return {str(k): float(v) for k, v in table.items()} if isinstance(table, dict) else {}
