"""What a stage is: the interface every module in ``stages/`` implements (DESIGN §1).

A stage reads fields (tar members) and columns (manifest scalars) written by the stages before it and adds
its own. ``process`` returns values, never raises for a bad sample: a :class:`Result` is ``ok`` (with files
and columns), ``filtered`` (with a reason) or ``failed`` (with an error). An exception that escapes
``process`` is treated as a crash of that sample: it is retried and, if it keeps failing, quarantined.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from manifests.manifest import Status
from manifests.shards import FieldData, Spilled, field_bytes
from manifests.storage import Storage
from pipeline import scratch

SOURCE_SAMPLE_TIMEOUT_S = 600.0
"""``timeouts.sample_s`` of a source stage whose config and type set none: a source reads files and URLs from
outside the run, where a stream that never ends or a server that stalls would otherwise hang it for ever."""

RUNTIME_ONLY = {"fingerprint": False}
"""``Field(..., json_schema_extra=RUNTIME_ONLY)`` marks a param that changes speed or memory, not the output
(batch sizes, offloading): changing it does not make the stage stale."""


class Params(BaseModel):
    """Base for stage params: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint_data(self) -> dict[str, Any]:
        """The params that enter the stage fingerprint: all but those marked ``RUNTIME_ONLY``."""
        data = self.model_dump(mode="json")
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and extra.get("fingerprint") is False:
                data.pop(name, None)
        return data


@dataclass
class Result:
    sample_id: str
    status: Status
    files: dict[str, FieldData] = field(default_factory=dict)
    """Tar fields: bytes, or bytes spilled to a local file (``StageContext.spill``)."""
    columns: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    permanent: bool = False
    """A failure the input's content causes (an empty file, not a video, cannot be decoded): the same on every try,
    so ``ffp retry`` does not redo it (the manifest column ``permanent``; docs/reliability.md)."""

    @classmethod
    def ok(cls, sample_id: str, files: Mapping[str, FieldData] | None = None, **columns: Any) -> Result:
        return cls(sample_id, Status.OK, dict(files or {}), columns)

    def read(self, field_name: str) -> bytes:
        """The bytes of one of its fields, spilled or not."""
        return field_bytes(self.files[field_name])

    @classmethod
    def filtered(cls, sample_id: str, reason: str, **columns: Any) -> Result:
        return cls(sample_id, Status.FILTERED, {}, columns, reason)

    @classmethod
    def failed(cls, sample_id: str, error: str, *, permanent: bool = False, **columns: Any) -> Result:
        """``permanent``: the input itself is at fault and a retry would fail the same way (see ``permanent``)."""
        return cls(sample_id, Status.FAILED, {}, columns, error, permanent)


class UndeclaredRead(KeyError):
    """A stage read an upstream field or column it did not declare (``reads``, ``optional_reads_for``): refused at
    run time as it is when the graph is built."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DeclaredColumns(dict):  # type: ignore[type-arg]
    """A sample's upstream columns, holding only what the stage declared it reads. Asking for a column that a stage
    before it writes but this one did not declare raises :class:`UndeclaredRead` (a silent ``None`` would hide the
    missing declaration); a name no stage before it writes reads as absent, as it always did."""

    def __init__(self, values: Mapping[str, Any], *, stage: str, undeclared: frozenset[str]) -> None:
        super().__init__(values)
        self.stage, self.undeclared = stage, undeclared

    def _check(self, key: object) -> None:
        if key in self.undeclared and not dict.__contains__(self, key):
            raise UndeclaredRead(
                f"stage {self.stage!r} read column {key!r}, which it does not declare: add it to its `reads` "
                "(or `optional_reads_for` when it may be absent)"
            )

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._check(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._check(key)
        return super().__contains__(key)


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
    models: dict[str, Any] = field(default_factory=dict)
    """Model ids, revisions and prompt versions of this stage and every stage before it (``StageNode.models``)."""
    pair_columns: tuple[str, ...] = ()
    """The pair columns the stages before this one declare (``Stage.pair_columns``): what an export carries."""
    tensor_parallel: int = 1
    """GPUs one model instance spans (``resources.tensor_parallel``); the actor holds a placement group."""
    run_rows: Callable[[], list[dict[str, Any]]] | None = None
    """For a ``run_wide`` stage, set by its worker for each shard: every sample that reaches the stage in the whole
    run, as ``{"sample_id", "shard", <each column the stage reads>}``, sorted by shard then sample id."""
    run_state: str = ""
    """For a ``run_wide`` stage, set with ``run_rows``: the state of the run those rows are of (the same value, the
    same rows), for a stage that derives something from all of them once per state."""
    _scratch: str | None = field(default=None, repr=False, compare=False)

    def spill(self, data: bytes) -> Spilled:
        """``data`` moved to a local file, to hand over as a field in place of the bytes: a stage that makes many
        outputs from one input spills each as it is made, so that memory holds one, not all (ingest's clips of a
        long source). The worker streams spilled fields into ``_partial/`` and empties the folder after each
        batch; without a worker (tests, notebooks) they stay until the process exits."""
        if self._scratch is None:
            self._scratch = scratch.folder(self.name)
        return Spilled.write(data, self._scratch)

    def discard_spilled(self) -> None:
        """Remove every field spilled so far (its results are saved, or lost with a crash)."""
        if self._scratch is not None:
            scratch.empty(self._scratch)


class Stage:
    """Subclass once per stage type and register it in ``stages/registry.py``."""

    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]] = Params
    reads: ClassVar[tuple[str, ...]] = ()
    """Fields and columns this stage needs from the stages before it: checked when the graph is built, and at run
    time the stage receives only these (and ``optional_reads_for``); reading anything else raises
    :class:`UndeclaredRead`."""
    writes: ClassVar[tuple[str, ...]] = ()
    """Tar fields an ok result may contain, e.g. ``("clip.mp4", "frame0.png")`` (``writes_for``: as params choose)."""
    columns: ClassVar[dict[str, pa.DataType]] = {}
    """Scalar outputs stored as manifest columns, with their Arrow types."""
    pair_columns: ClassVar[tuple[str, ...]] = ()
    """Those of ``columns`` that belong to the exported pair: every stage with the ``export`` role after this one
    receives them and carries them into its rows and ``dataset.parquet`` (checked: each is in ``columns``)."""
    roles: ClassVar[frozenset[str]] = frozenset()
    """What tools may rely on, instead of the stage's type name: ``judge`` (rows with ``verdict``, ``score_*``,
    ``reject_*``; see ``pair_media_for``), ``export`` (writes the pairs; receives and carries every upstream pair
    column; see ``pair_selection``)."""
    output_dir: ClassVar[str | None] = None
    """Folder of the stage's tars inside the run; ``None`` means ``stages/<name>``."""
    is_source: ClassVar[bool] = False
    """Source stages read the run's inputs instead of another stage."""
    run_wide: ClassVar[bool] = False
    """The stage decides each sample against every sample of the run (near-duplicate removal): its shards run once
    every shard of the stages before it is committed and current (a barrier; the stages before it are not held
    back waiting for it), and ``StageContext.run_rows()`` gives it the columns it reads for every sample that
    reaches it, from every shard. A changed shard before it redoes all of its shards."""
    labelled: ClassVar[bool] = False
    """Reviewers label this stage's samples (the judge): labels name the pair by this stage's name."""
    uses_labels: ClassVar[bool] = False
    """The stage reads review labels (export): each sample gets the columns ``label``, ``label_reviewer`` and
    ``label_note`` from the nearest ``labelled`` stage before it, and a changed label redoes that sample."""
    default_sample_timeout_s: ClassVar[float | None] = None
    """``timeouts.sample_s`` when the config sets none (see ``sample_timeout_default``)."""
    batch_size: int = 1
    """Items handed to one ``process`` call; each batch is checkpointed to ``_partial/`` as it finishes.
    A class default; an instance may set its own from its params (e.g. a whole shard per vLLM batch)."""

    def __init__(self, params: Params, context: StageContext) -> None:
        self.params, self.context = params, context
        self._per_thread = threading.local()  # model_seconds of the batch each thread runs (see shards_at_once)

    @property
    def model_seconds(self) -> float:
        """Seconds spent in ``model_call`` by this thread since the worker reset it (once per batch)."""
        return getattr(self._per_thread, "model_seconds", 0.0)

    @model_seconds.setter
    def model_seconds(self, value: float) -> None:
        self._per_thread.model_seconds = value

    @contextmanager
    def model_call(self) -> Iterator[None]:
        """Wrap the model's forward/generate calls: their time is kept apart (manifest ``model_seconds``), so
        the decode, pre/post-processing and encode overhead around the model shows in the numbers."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.model_seconds += time.perf_counter() - started

    @classmethod
    def shards_at_once(cls, params: Params) -> int:
        """Shards one actor of this stage runs at the same time, each in its own thread of the actor (1 by default).
        More than 1 only for a stage whose ``process`` may run in several threads at once and whose model serves
        concurrent callers, such as a vLLM engine, which batches the requests of every shard in flight together: the
        engine then never drains at a shard boundary. The scheduler gives such an actor a next shard while its
        current ones run; pool sizes still count actors."""
        return 1

    @classmethod
    def reads_for(cls, params: Params) -> tuple[str, ...]:
        """What this stage reads with these params (``reads`` unless params choose the inputs)."""
        return cls.reads

    @classmethod
    def writes_for(cls, params: Params) -> tuple[str, ...]:
        """The tar fields an ok result may contain with these params (``writes`` unless params choose them)."""
        return cls.writes

    @classmethod
    def optional_reads_for(cls, params: Params) -> tuple[str, ...]:
        """Columns this stage reads when a stage before it writes them (not required when the graph is built)."""
        return ()

    @classmethod
    def pair_media_for(cls, params: Params) -> dict[str, str]:
        """For a judge or export: which upstream field is each pair member (``src``, ``edit``, ``edit0``, ``mask``)."""
        return {}

    @classmethod
    def pair_selection(cls, params: Params) -> str:
        """For an export: the pairs it writes after a judge (``accepted``, ``rejected`` or ``all``)."""
        return "accepted"

    @classmethod
    def sample_timeout_default(cls) -> float | None:
        """The per-sample time limit when the config sets none: ``default_sample_timeout_s``, else
        ``SOURCE_SAMPLE_TIMEOUT_S`` for a source stage (no input may hang a run) and none for the others."""
        if cls.default_sample_timeout_s is not None:
            return cls.default_sample_timeout_s
        return SOURCE_SAMPLE_TIMEOUT_S if cls.is_source else None

    @classmethod
    def input_columns(cls, row: Mapping[str, Any]) -> dict[str, Any]:
        """What a row this stage did not make (a quarantined input) can still say about its input. Rows of other
        stages join their inputs by ``sample_id``; a source stage's inputs are in no manifest, so a source stage
        returns the declared columns its source row fills (``source_id``, ``source_uri``, ...)."""
        return {}

    @classmethod
    def fingerprint_extra(cls, params: Params) -> dict[str, Any]:
        """Anything besides params that changes the output (model ids and revisions, prompt templates)."""
        return {}

    @classmethod
    def output_dir_for(cls, params: Params) -> str | None:
        """Folder of the stage's tars with these params (``output_dir`` unless params choose it)."""
        return cls.output_dir

    @classmethod
    def finalize_outputs_for(cls, params: Params) -> tuple[str, ...]:
        """Files ``finalize`` writes with these params (``finalize_outputs`` unless params choose them)."""
        return cls.finalize_outputs

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

    @classmethod
    def samples_per_input(cls, params: Params) -> float:
        """Samples one input of this stage becomes at most (a planner's swap and removal of one clip): what the stages
        after it see per clip, for cost estimates before anything is measured."""
        return 1.0

    # Optional hook --------------------------------------------------------------------------------------
    finalize_outputs: ClassVar[tuple[str, ...]] = ()
    """Files ``finalize`` writes (relative to the run folder); a missing one makes it run again."""

    @classmethod
    def finalize(cls, name: str, run: Storage, params: Params) -> None:
        """Called on the driver once every shard of the stage is committed (e.g. a dataset card)."""
