"""What a stage is: the interface every module in ``stages/`` implements (DESIGN §1).

A stage reads fields (tar members) and columns (manifest scalars) written by the stages before it and adds
its own. ``process`` returns values, never raises for a bad sample: a :class:`Result` is ``ok`` (with files
and columns), ``filtered`` (with a reason) or ``failed`` (with an error). An exception that escapes
``process`` is treated as a crash of that sample: it is retried and, if it keeps failing, quarantined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from manifests.manifest import Status
from manifests.storage import Storage


class Params(BaseModel):
    """Base for stage params: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Result:
    sample_id: str
    status: Status
    files: dict[str, bytes] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    @classmethod
    def ok(cls, sample_id: str, files: Mapping[str, bytes] | None = None, **columns: Any) -> Result:
        return cls(sample_id, Status.OK, dict(files or {}), columns)

    @classmethod
    def filtered(cls, sample_id: str, reason: str, **columns: Any) -> Result:
        return cls(sample_id, Status.FILTERED, {}, columns, reason)

    @classmethod
    def failed(cls, sample_id: str, error: str, **columns: Any) -> Result:
        return cls(sample_id, Status.FAILED, {}, columns, error)


@dataclass
class Sample:
    """One input item of a stage: a sample from upstream stages, or a source row for a source stage."""

    sample_id: str
    shard: int
    columns: dict[str, Any]
    _read: Callable[[str], bytes] = field(repr=False, default=lambda name: b"")

    def read(self, field_name: str) -> bytes:
        """Bytes of a field (tar member) written by an upstream stage."""
        return self._read(field_name)


@dataclass
class StageContext:
    """What a stage instance knows about where it runs."""

    name: str
    run: Storage
    lineage: dict[str, str] = field(default_factory=dict)
    """Fingerprint of this stage and of every stage before it, for provenance."""


class Stage:
    """Subclass once per stage type and register it in ``stages/registry.py``."""

    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]] = Params
    reads: ClassVar[tuple[str, ...]] = ()
    """Fields and columns this stage needs from the stages before it (checked when the graph is built)."""
    writes: ClassVar[tuple[str, ...]] = ()
    """Tar fields an ok result may contain, e.g. ``("clip.mp4", "frame0.png")``."""
    columns: ClassVar[dict[str, pa.DataType]] = {}
    """Scalar outputs stored as manifest columns, with their Arrow types."""
    output_dir: ClassVar[str | None] = None
    """Folder of the stage's tars inside the run; ``None`` means ``stages/<name>``."""
    is_source: ClassVar[bool] = False
    """Source stages read the run's inputs instead of another stage."""
    batch_size: ClassVar[int] = 1
    """Items handed to one ``process`` call; each batch is checkpointed to ``_partial/`` as it finishes."""

    def __init__(self, params: Params, context: StageContext) -> None:
        self.params, self.context = params, context

    @classmethod
    def reads_for(cls, params: Params) -> tuple[str, ...]:
        """What this stage reads with these params (``reads`` unless params choose the inputs)."""
        return cls.reads

    @classmethod
    def fingerprint_extra(cls, params: Params) -> dict[str, Any]:
        """Anything besides params that changes the output (model ids and revisions, prompt templates)."""
        return {}

    def setup(self) -> None:
        """Load models once per actor."""

    def prepare_shard(self, samples: Sequence[Sample]) -> None:
        """Sees every input of the shard before processing (e.g. to pick donors from other samples)."""

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        raise NotImplementedError

    # Source stages only -------------------------------------------------------------------------------
    @classmethod
    def list_sources(cls, inputs: Sequence[Any], params: Params) -> list[dict[str, Any]]:
        """Rows describing the run's inputs, each with a unique ``source_id``; frozen at first start."""
        raise NotImplementedError(f"{cls.__name__} is not a source stage")

    @classmethod
    def samples_per_source(cls, params: Params) -> int:
        """Upper bound of samples one source yields, used to size source shards."""
        return 1

    # Optional hook --------------------------------------------------------------------------------------
    finalize_outputs: ClassVar[tuple[str, ...]] = ()
    """Files ``finalize`` writes (relative to the run folder); a missing one makes it run again."""

    @classmethod
    def finalize(cls, name: str, run: Storage, params: Params) -> None:
        """Called on the driver once every shard of the stage is committed (e.g. a dataset card)."""
