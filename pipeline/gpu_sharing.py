"""GPU sharing (``scheduler.share_gpus``): a light stage's actor runs on the GPU of a whole-GPU stage's actor.

Without it, a stage asking a fraction of a GPU (depth at a quarter) takes a GPU of its own that no whole-GPU stage
can use: on 8 GPUs the style track's animate and stylize then have 7, and the 8th does only depth's work (about an
eighth of its time). With it, every GPU the light and whole-GPU stages use is a *slot*: one placement-group bundle
of one GPU (and the CPUs of its actors) that ffp reserves and fills itself, so the packing is exact instead of left
to Ray's placement:

- the *main* room holds one actor of a whole-GPU stage, which asks Ray for ``1 - room`` of the GPU;
- the *guest* room (``room``, the largest fraction a light stage asks) holds light actors at their own fraction.

The two processes then share the GPU as any two CUDA processes do (time-sliced kernels, one memory): their models
must fit its memory together, which ``ffp models check`` proves per GPU type. Stages that span several GPUs
(``gpus`` > 1, ``tensor_parallel`` > 1) do not share. Slots are reserved as actors need them and given back when the
last actor in them ends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import PipelineConfig, Resources

MAIN_ROOMS = "GPU_MAIN"
"""Planning resource (``plan_actors``): whole GPUs a main actor takes one of."""
GUEST_ROOMS = "GPU_GUEST"
"""Planning resource: the guest fractions of all GPUs (``room`` per GPU)."""


def is_main(resources: Resources) -> bool:
    return resources.gpus == 1 and resources.tensor_parallel == 1


def is_guest(resources: Resources) -> bool:
    return 0 < resources.gpus < 1 and resources.tensor_parallel == 1


@dataclass(frozen=True)
class Sharing:
    """Which stages share GPUs in a run, and what one slot reserves."""

    room: float
    """The guest room of every GPU: the largest fraction a light stage asks."""
    mains: frozenset[str]
    guests: frozenset[str]
    main_cpus: float
    """CPUs a slot keeps for its main actor (the most a main stage asks)."""
    guest_cpus: float
    """CPUs a slot keeps for its guests (the most that a full guest room of one light stage asks)."""
    slot_memory_gb: float

    @classmethod
    def of(cls, config: PipelineConfig, stages_run: Iterable[str] | None = None) -> Sharing | None:
        """The run's sharing, or None: ``scheduler.share_gpus`` is off, or no whole-GPU or no light stage runs (of
        ``stages_run``, by default all): light stages alone pack several to a GPU, as without sharing."""
        if not config.scheduler.share_gpus:
            return None
        names = set(config.stages) if stages_run is None else set(stages_run) & set(config.stages)
        stages = {name: config.stages[name].resources for name in names}
        mains = {name for name, res in stages.items() if is_main(res)}
        guests = {name for name, res in stages.items() if is_guest(res)}
        if not mains or not guests:
            return None
        room = max(stages[name].gpus for name in guests)
        guest_cpus = max(stages[name].cpus * math.floor(room / stages[name].gpus + 1e-9) for name in guests)
        guest_memory = max((stages[name].memory_gb or 0) * math.floor(room / stages[name].gpus + 1e-9)
                           for name in guests)
        return cls(
            room=room, mains=frozenset(mains), guests=frozenset(guests),
            main_cpus=max(stages[name].cpus for name in mains), guest_cpus=guest_cpus,
            slot_memory_gb=max(stages[name].memory_gb or 0 for name in mains) + guest_memory,
        )

    def shares(self, stage: str) -> bool:
        return stage in self.mains or stage in self.guests

    def gpus_asked(self, stage: str, resources: Resources) -> float:
        """The fraction of its slot's GPU an actor of ``stage`` asks Ray for."""
        return 1.0 - self.room if stage in self.mains else resources.gpus

    def plan_need(self, stage: str, resources: Resources) -> dict[str, float]:
        """What one actor takes in planning terms: a main room, or its fraction of the guest rooms; a stage that does
        not share takes whole GPUs, both rooms of each."""
        if stage in self.mains:
            return {"CPU": resources.cpus, MAIN_ROOMS: 1.0}
        if stage in self.guests:
            return {"CPU": resources.cpus, GUEST_ROOMS: resources.gpus}
        gpus = resources.gpus_needed()
        return {"CPU": resources.cpus_needed(), MAIN_ROOMS: gpus, GUEST_ROOMS: gpus * self.room}

    def plan_capacity(self, capacity: dict[str, float]) -> dict[str, float]:
        gpus = capacity.get("GPU", 0.0)
        return {**capacity, MAIN_ROOMS: gpus, GUEST_ROOMS: gpus * self.room}

    def gpus_held(self, stage: str, resources: Resources) -> float:
        """The GPUs one actor of ``stage`` holds: its part of its slot's GPU if it shares, else its own."""
        return self.gpus_asked(stage, resources) if self.shares(stage) else resources.gpus_needed()

    def slot_holds(self) -> dict[str, float]:
        """What a reserved slot holds of the cluster, in the scheduler's terms."""
        return {"CPU": self.main_cpus + self.guest_cpus, "GPU": 1.0}


@dataclass
class Slot:
    """One reserved GPU and the actors in it."""

    handle: Any
    """The executor's reservation (a placement group on Ray)."""
    main: Any | None = None
    guests: dict[int, tuple[float, float]] = field(default_factory=dict)
    """id(light actor) -> (its GPU fraction, its CPUs)."""

    @property
    def empty(self) -> bool:
        return self.main is None and not self.guests

    def add(self, actor: Any, main: bool, gpus: float, cpus: float) -> None:
        if main:
            self.main = actor
        else:
            self.guests[id(actor)] = (gpus, cpus)

    def remove(self, actor: Any) -> None:
        if self.main is actor:
            self.main = None
        self.guests.pop(id(actor), None)

    def has_room(self, sharing: Sharing, stage: str, resources: Resources) -> bool:
        if stage in sharing.mains:
            return self.main is None
        used_gpus = sum(gpus for gpus, _ in self.guests.values())
        used_cpus = sum(cpus for _, cpus in self.guests.values())
        return (used_gpus + resources.gpus <= sharing.room + 1e-9
                and used_cpus + resources.cpus <= sharing.guest_cpus + 1e-9)
