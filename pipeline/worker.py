"""Running one (stage, shard): gather inputs, reuse what is already done, process the rest, commit.

This is the body of a stage actor (see ``pipeline.runner``); it is plain Python so tests can drive it
without Ray. Order of work for a shard:

1. its input items: the shard's source rows, or the samples that are ``ok`` in every upstream shard;
2. rows of an earlier commit with the same fingerprint move to ``_partial/`` (all of them, except failed
   ones when retrying: not those marked ``permanent`` unless asked, see ``plan.retry_statuses``), and only then is
   the old manifest removed: a crash at any point loses nothing;
3. each item not in ``_partial/`` is processed in batches, its attempt counted before it runs;
4. the tar and then the manifest are written, and ``_partial/`` is cleared.
"""

from __future__ import annotations

import logging
import os
import posixpath
import resource
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from manifests import retry as storage_retry
from manifests.labels import current_labels
from manifests.layout import MANIFEST_PATTERN, manifests_dir, shard_of
from manifests.lease import LeaseLost, check_lease
from manifests.manifest import Status, commit_shard, manifest_path, read_manifest, uncommit_shard
from manifests.partial import PartialStore
from manifests.shards import LazySamples, ShardReader, open_shard
from manifests.storage import Storage, StorageFull
from pipeline.faults import inject
from pipeline.graph import StageGraph, StageNode
from pipeline.oom import OOM_LIMIT, drop_traceback, free_memory, is_memory_error, oom_reason
from pipeline.plan import RunPlan, is_retried
from pipeline.stage import DeclaredColumns, Result, Sample, Stage, StageContext, UndeclaredRead

WORKER = f"{socket.gethostname()}:{os.getpid()}"
TIMEOUT_EXIT_CODE = 75
log = logging.getLogger("ffp.worker")


@dataclass(frozen=True)
class ShardTask:
    """One unit of scheduling, with what the driver knows of its inputs."""

    stage: str
    shard: int
    inputs_digest: str
    source_rows: tuple[dict[str, Any], ...] = ()
    retry: frozenset[str] = frozenset()
    """Statuses whose committed samples are redone (``ffp retry``)."""
    lease: str | None = None
    """The token of the driver's lease (``manifests.lease``): the try writes nothing, and commits nothing, once the
    run folder's lease carries another one (fencing). None: no lease (workers driven in-process by tests)."""
    try_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    """This dispatch of the shard (unique across drivers and runs): each attempt at an item records it, so that a
    try whose worker is killed for memory is blamed on exactly the items it had in flight."""

    @classmethod
    def from_plan(
        cls, plan: RunPlan, stage: str, shard: int, *, retry: frozenset[str] = frozenset(), lease: str | None = None
    ) -> ShardTask:
        expected = plan.expected_inputs_digest(stage, shard)
        if expected is None:
            raise InputError(f"{stage}/shard {shard}: upstream shards are not committed and current")
        rows = plan.source_rows[stage].get(shard, []) if stage in plan.source_rows else []
        return cls(stage, shard, expected, tuple(rows), retry, lease)


@dataclass
class ShardSummary:
    stage: str
    shard: int
    counts: dict[str, int] = field(default_factory=dict)
    processed: int = 0
    reused: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    """The worker process's peak resident memory so far (its model included), when the shard was committed."""
    retries: dict[str, int] = field(default_factory=dict)
    """Storage calls retried while this shard ran, per kind of transient error (``manifests/retry.py``)."""


class InputError(RuntimeError):
    """The shard's inputs are not in place (an upstream shard is missing or changed)."""


class ShardWorker:
    """Holds one stage instance (models loaded once) and runs shards of that stage."""

    def __init__(self, storage: Storage, graph: StageGraph, stage_name: str, *, exit_on_timeout: bool = False) -> None:
        """``exit_on_timeout``: end this process when a sample runs past ``timeouts.sample_s`` (a stage actor does:
        the driver then retries the shard in a new actor). Without it the limit is not enforced, since a thread
        cannot be stopped from outside."""
        self.storage, self.graph = storage, graph
        self.node: StageNode = graph.nodes[stage_name]
        self.sample_timeout = graph.config.sample_timeout_s(stage_name) if exit_on_timeout else None
        context = StageContext(
            name=stage_name, run=storage, lineage=self.node.lineage(graph), models=self.node.models(graph),
            tensor_parallel=self.node.resources.tensor_parallel, pair_columns=self.node.pair_columns,
        )
        self.stage: Stage = self.node.cls(self.node.params, context)
        self._run_rows: tuple[str, list[dict[str, Any]]] | None = None  # a run-wide stage's rows, per inputs digest
        inject("setup", stage_name)
        self.stage.setup()
        self.max_attempts = graph.config.max_attempts
        self.oom_limit = min(OOM_LIMIT, self.max_attempts)

    # Inputs ---------------------------------------------------------------------------------------------
    def _inputs(self, task: ShardTask, readers: _LazyReaders) -> list[Sample]:
        if self.node.cls.is_source:
            return [Sample(row["source_id"], task.shard, dict(row)) for row in task.source_rows]
        return upstream_samples(self.storage, self.graph, self.node.name, task.shard, readers)

    # The shard ------------------------------------------------------------------------------------------
    def run_shard(self, task: ShardTask) -> ShardSummary:
        if task.stage != self.node.name:
            raise ValueError(f"worker of stage {self.node.name} got a task of stage {task.stage}")
        if self.node.run_wide:
            self.stage.context.run_rows = lambda: self._rows_of_run(task.inputs_digest)
            self.stage.context.run_state = task.inputs_digest
        with _LazyReaders(self.storage, self.graph, task.shard) as readers:
            return self._run(task, self._inputs(task, readers))

    def _rows_of_run(self, inputs_digest: str) -> list[dict[str, Any]]:
        """``StageContext.run_rows`` of a run-wide stage: read once per actor for each state of the shards before
        it (their digest is the same for all of its shards)."""
        if self._run_rows is None or self._run_rows[0] != inputs_digest:
            self._run_rows = (inputs_digest, run_wide_rows(self.storage, self.graph, self.node.name))
        return self._run_rows[1]

    def _run(self, task: ShardTask, samples: list[Sample]) -> ShardSummary:
        started, node, shard = time.time(), self.node, task.shard
        retries_before = storage_retry.counts()
        self._fence(task)  # before anything is written: the shard may be another driver's now
        for target in (node.tar_path(shard), manifest_path(node.name, shard)):  # left by a worker killed mid-write
            self.storage.remove_temporaries(posixpath.dirname(target), prefix=posixpath.basename(target))
        # a run-wide stage's results hold only for the state of the whole run they were made from
        valid_for = f"{node.fingerprint}/{task.inputs_digest}" if node.run_wide else node.fingerprint
        partial = PartialStore(self.storage, node.name, shard, valid_for, task.try_id)
        self.storage.remove_temporaries(partial.dir)
        self._move_commit_to_partial(partial, shard, {s.sample_id: s for s in samples}, task)
        for blamed in partial.apply_oom_deaths():  # before any item is begun: tries are told apart by their items
            log.warning("%s/shard %s: %s was in flight when a worker was killed for memory", node.name, shard, blamed)
        summary = ShardSummary(node.name, shard)
        results: dict[str, list[dict[str, Any]]] = {}  # the rows of each item; their files stay in _partial/
        pending: list[Sample] = []
        for sample in samples:
            saved = partial.load(sample.sample_id)
            if saved is not None:
                results[sample.sample_id] = saved
                summary.reused += 1
            elif len(ooms := partial.ooms(sample.sample_id)) >= self.oom_limit:
                results[sample.sample_id] = self._quarantine(sample, partial, oom_reason(ooms))
            elif partial.attempts(sample.sample_id) >= self.max_attempts:
                limit = partial.timed_out(sample.sample_id)
                why = f"ran past {limit}" if limit else "the worker died"
                results[sample.sample_id] = self._quarantine(
                    sample, partial, f"{why} on each of {self.max_attempts} attempts at this sample"
                )
            else:
                pending.append(sample)
        if pending:
            self.stage.prepare_shard(samples)
        for batch in _batches(pending, self.stage.batch_size):
            try:
                for sample_id, item_rows in self._process_batch(batch, partial).items():
                    results[sample_id] = item_rows
                    summary.processed += 1
            finally:
                self.stage.context.discard_spilled()  # saved to _partial/ by now, or lost with the batch
        rows = [row for item_rows in results.values() for row in item_rows]
        inject("commit", node.name)
        self._fence(task)  # fencing: the window left is this read and the writes that follow (docs/reliability.md)
        with partial.files(rows) as files:  # read back sample by sample as the tar is written: memory holds one
            info = commit_shard(
                self.storage, stage=node.name, shard=shard, tar_path=node.tar_path(shard), samples=files, rows=rows,
                stage_columns=node.columns, schema=self.graph.manifest_schema, fingerprint=node.fingerprint,
                inputs_digest=task.inputs_digest,
                extra={"seconds": round(time.time() - started, 3), "worker": WORKER, "reused": summary.reused,
                       "retries": storage_retry.since(retries_before), **self._counted(rows)},
            )
        partial.clear()
        summary.counts, summary.seconds = dict(info.counts), time.time() - started
        summary.retries = storage_retry.since(retries_before)
        summary.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
        return summary

    def _counted(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """What the commit info counts besides the statuses: the permanent failures (``ffp retry`` leaves them) and,
        for a judge, the ok rows per verdict (``ffp status`` shows them without reading any manifest's rows)."""
        counted: dict[str, Any] = {"permanent_failed": sum(1 for r in rows if r["status"] == Status.FAILED
                                                           and r.get("permanent"))}
        if "judge" in self.node.cls.roles and "verdict" in self.node.columns:
            verdicts = [str(r.get("verdict")) for r in rows if r["status"] == Status.OK and r.get("verdict")]
            counted["verdicts"] = {verdict: verdicts.count(verdict) for verdict in sorted(set(verdicts))}
        return counted

    def _fence(self, task: ShardTask) -> None:
        """Refuse to go on unless the run folder's lease still carries the token of the driver that sent ``task``."""
        try:
            check_lease(self.storage, task.lease)
        except LeaseLost as exc:
            log.error("%s/shard %s: refused: %s", task.stage, task.shard, exc)
            raise

    def _move_commit_to_partial(
        self, partial: PartialStore, shard: int, inputs: dict[str, Sample], task: ShardTask
    ) -> None:
        found = read_manifest(self.storage, self.node.name, shard)
        if found is None:
            return
        info, table, retry = *found, task.retry
        if info.fingerprint == self.node.fingerprint and (
            not self.node.run_wide or info.inputs_digest == task.inputs_digest  # run-wide: made from another run
        ):
            by_input: dict[str, list[dict[str, Any]]] = {}
            for row in table.to_pylist():
                by_input.setdefault(row["input_id"], []).append(row)
            reader = open_shard(self.storage, info.tar_path) if info.tar_samples else None
            for input_id, rows in by_input.items():
                retried = any(is_retried(r["status"], r.get("permanent"), retry) for r in rows)
                keep = input_id in inputs and not retried and not self._relabelled(rows, inputs[input_id])
                if keep and partial.load(input_id) is None:
                    for row in rows:
                        row["finished_at"] = row["finished_at"].timestamp() if row.get("finished_at") else None
                    ok = [r["sample_id"] for r in rows if reader and reader.fields(r["sample_id"])]
                    partial.save(input_id, rows, LazySamples(ok, reader.sample if reader else lambda _: {}))
                elif retried and input_id in inputs and not any(r["status"] == Status.QUARANTINED or r.get("permanent")
                                                                for r in rows):
                    # failed samples carry their attempts forward, so repeated failures end in quarantine;
                    # quarantined ones and permanent failures retried on request start afresh
                    partial.set_attempts(input_id, max(int(r.get("attempts") or 1) for r in rows))
            if reader is not None:
                reader.close()
        uncommit_shard(self.storage, self.node.name, shard)

    def _relabelled(self, rows: list[dict[str, Any]], sample: Sample) -> bool:
        """Rows committed under another review label than the one the input carries now (``upstream_samples``
        gives a stage that uses labels the current one)."""
        return self.node.cls.uses_labels and any(row.get("label") != sample.columns.get("label") for row in rows)

    # Processing -----------------------------------------------------------------------------------------
    def _process_batch(self, batch: list[Sample], partial: PartialStore) -> dict[str, list[dict[str, Any]]]:
        """The rows of each sample of ``batch``, its result (rows and files) saved to ``partial`` first."""
        if len(batch) > 1 and any(partial.attempts(s.sample_id) for s in batch):
            batch_results: dict[str, list[dict[str, Any]]] = {}
            for sample in batch:  # an earlier try of this batch crashed: isolate the culprit
                batch_results.update(self._process_batch([sample], partial))
            return batch_results
        attempts = {s.sample_id: partial.begin(s.sample_id, WORKER) for s in batch}
        started = time.time()
        self.stage.model_seconds = 0.0
        crash: tuple[str, bool] | None = None
        try:
            with self._watchdog(batch, partial):
                for sample in batch:
                    inject("process", self.node.name, sample.sample_id)
                produced = self.stage.process(batch)
        except StorageFull:
            for sample in batch:
                partial.forget_attempt(sample.sample_id, attempts[sample.sample_id])
            raise
        except UndeclaredRead as exc:  # a stage bug, the same on every try: refused, not retried
            log.error("%s/shard %s: %s", self.node.name, batch[0].shard, exc)
            produced = [Result.failed(s.sample_id, f"refused: {exc}") for s in batch]
        except Exception as exc:  # noqa: BLE001 - a crash of the stage code on these samples
            crash = (_describe(exc), is_memory_error(exc))
            if crash[1]:
                drop_traceback(exc)  # what the failed allocation left half built goes with the frames' locals
        if crash is not None:  # out of the except block: the exception and its frames are gone
            return self._after_crash(batch, partial, attempts, *crash)
        elapsed = (time.time() - started) / max(1, len(batch))
        model_elapsed = self.stage.model_seconds / max(1, len(batch))
        try:
            grouped = self._group(batch, produced)
        except ValueError as exc:  # a stage bug (wrong ids): every sample of the batch fails, the shard goes on
            grouped = {s.sample_id: [Result.failed(s.sample_id, str(exc))] for s in batch}
        out: dict[str, list[dict[str, Any]]] = {}
        for sample in batch:
            rows, files = [], {}
            for result in grouped[sample.sample_id]:
                result = self._check(result)
                rows.append(self._row(result, sample, attempts[sample.sample_id], elapsed, model_elapsed))
                if result.status == Status.OK and result.files:
                    files[result.sample_id] = result.files
            try:
                partial.save(sample.sample_id, rows, files)
            except StorageFull:
                for unsaved in batch[batch.index(sample):]:
                    partial.forget_attempt(unsaved.sample_id, attempts[unsaved.sample_id])
                raise
            out[sample.sample_id] = rows
        return out

    def _after_crash(self, batch: list[Sample], partial: PartialStore, attempts: dict[str, int], error: str,
                     out_of_memory: bool) -> dict[str, list[dict[str, Any]]]:
        """``process`` raised ``error`` on ``batch``: a batch is retried one sample at a time (a batch too large for
        memory included: alone, each may fit), a sample up to ``max_attempts``, or until it ran out of memory
        ``oom_limit`` times (each sample of a batch that did counts it once, as when its worker is killed for memory
        with the batch in flight); then it is quarantined."""
        times: dict[str, int] = {}
        if out_of_memory:
            free_memory()
            log.warning("%s/shard %s: out of memory on %s: %s", self.node.name, batch[0].shard,
                        [s.sample_id for s in batch], error)
            times = {s.sample_id: partial.note_oom(s.sample_id, f"attempt {attempts[s.sample_id]}", "raised", error)
                     for s in batch}
        out: dict[str, list[dict[str, Any]]] = {}
        for sample in batch:
            sid = sample.sample_id
            if out_of_memory and (times[sid] >= self.oom_limit or attempts[sid] >= self.max_attempts):
                out[sid] = self._quarantine(sample, partial, oom_reason(partial.ooms(sid)))
            elif len(batch) > 1 or attempts[sid] < self.max_attempts:
                out.update(self._process_batch([sample], partial))
            else:
                out[sid] = self._quarantine(sample, partial, error)
        return out

    @contextmanager
    def _watchdog(self, batch: list[Sample], partial: PartialStore) -> Iterator[None]:
        """Ends the process if the batch runs past ``timeouts.sample_s`` per sample, after noting the limit on each
        sample so that the one that keeps hanging is quarantined with that reason."""
        if self.sample_timeout is None:
            yield
            return
        limit = self.sample_timeout * len(batch)

        def expire() -> None:
            for sample in batch:
                partial.note_timeout(sample.sample_id, self.sample_timeout or limit)
            log.error("%s/shard %s: %s ran past %.0f s; exiting so the driver retries it in a new actor",
                      self.node.name, batch[0].shard, [s.sample_id for s in batch], limit)
            os._exit(TIMEOUT_EXIT_CODE)

        timer = threading.Timer(limit, expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _group(self, batch: Sequence[Sample], produced: Sequence[Result]) -> dict[str, list[Result]]:
        """Results by the input they came from: an input's own id, or ids derived from it (``<id>-swap``)."""
        grouped: dict[str, list[Result]] = {s.sample_id: [] for s in batch}
        seen: set[str] = set()
        for result in produced:
            owners = [s.sample_id for s in batch if _derives(result.sample_id, s.sample_id)]
            if not owners:
                raise ValueError(f"{self.node.name} returned sample {result.sample_id!r} not derived from its inputs")
            if result.sample_id in seen:
                raise ValueError(f"{self.node.name} returned sample {result.sample_id!r} twice")
            seen.add(result.sample_id)
            grouped[max(owners, key=len)].append(result)
        for sample in batch:
            if not grouped[sample.sample_id]:
                grouped[sample.sample_id].append(
                    Result.failed(sample.sample_id, f"stage {self.node.name} returned no result for this sample")
                )
        return grouped

    def _check(self, result: Result) -> Result:
        unknown_files = set(result.files) - set(self.node.cls.writes_for(self.node.params))
        unknown_columns = set(result.columns) - set(self.node.columns)
        if unknown_files or unknown_columns:
            return Result.failed(
                result.sample_id,
                f"stage wrote undeclared fields {sorted(unknown_files)} / columns {sorted(unknown_columns)}",
            )
        return result

    def _row(
        self, result: Result, sample: Sample, attempts: int, seconds: float, model_seconds: float = 0.0
    ) -> dict[str, Any]:
        status, reason = result.status, result.reason
        if status == Status.FAILED and attempts >= self.max_attempts > 1 and not result.permanent:
            status, reason = Status.QUARANTINED, f"failed on {attempts} attempts; last: {reason}"
        return {
            "sample_id": result.sample_id, "input_id": sample.sample_id, "shard": sample.shard,
            "stage": self.node.name, "status": str(status), "reason": reason,
            "permanent": result.permanent if status == Status.FAILED else None, "attempts": attempts,
            "fingerprint": self.node.fingerprint, "worker": WORKER, "seconds": seconds, "model_seconds": model_seconds,
            "finished_at": time.time(), **result.columns,
        }

    def _quarantine(self, sample: Sample, partial: PartialStore, reason: str) -> list[dict[str, Any]]:
        result = Result(sample.sample_id, Status.QUARANTINED, columns=self.node.cls.input_columns(sample.columns),
                        reason=reason)
        rows = [self._row(result, sample, partial.attempts(sample.sample_id), 0.0)]
        partial.save(sample.sample_id, rows, {})
        return rows


def upstream_samples(storage: Storage, graph: StageGraph, stage: str, shard: int, readers: _LazyReaders, *,
                     declared_only: bool = True) -> list[Sample]:
    """The samples a (non-source) stage gets for a shard: those ok in every stage before it, with the columns of
    their ancestors (nearest wins), their fields readable through ``readers``, and their review label when the
    stage uses labels. A stage receives only what it declared (``StageNode.receives``): reading another upstream
    field or column raises :class:`UndeclaredRead`. ``declared_only=False`` hands over everything (for tools that
    look at a stage's inputs, such as the report)."""
    node = graph.nodes[stage]
    allowed = node.receives if declared_only else None
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for ancestor in node.ancestors:
        found = read_manifest(storage, ancestor, shard)
        if found is None:
            raise InputError(f"{node.name}/shard {shard}: no manifest for upstream stage {ancestor}")
        tables[ancestor] = {row["sample_id"]: row for row in found[1].to_pylist()}
    lineage = _Lineage(tables)
    label_stage = node.label_stage(graph)
    labels = current_labels(storage) if label_stage else {}
    samples = []
    for sample_id in lineage.ok_ids(node.deps):
        columns: dict[str, Any] = {}
        keys = {ancestor: lineage.key_in(ancestor, sample_id) for ancestor in node.ancestors}
        for ancestor in reversed(node.ancestors):  # nearest ancestor wins
            row = tables[ancestor].get(keys[ancestor] or "") or {}
            columns.update({k: row.get(k) for k in graph.nodes[ancestor].columns})
        if label_stage:
            label = labels.get((label_stage, sample_id))
            columns.update(label=label and str(label.decision), label_reviewer=label and label.reviewer,
                           label_note=label and label.note)
        if allowed is not None:
            columns = DeclaredColumns({k: v for k, v in columns.items() if k in allowed}, stage=stage,
                                      undeclared=frozenset(node.owners) - allowed)
        samples.append(Sample(sample_id, shard, columns, readers.reader_for(keys, node.owners, stage, allowed)))
    return samples


def run_wide_rows(storage: Storage, graph: StageGraph, stage: str) -> list[dict[str, Any]]:
    """Every sample that reaches ``stage`` in the run, from every shard, with the columns it declared it reads:
    ``{"sample_id", "shard", ...}`` sorted by shard, then sample id. Only manifests are read (no tar is opened)."""
    node = graph.nodes[stage]
    first = node.deps[0]
    shards = sorted(shard_of(rel) for rel in storage.list(manifests_dir(first), pattern=MANIFEST_PATTERN))
    rows: list[dict[str, Any]] = []
    for shard in shards:
        with _LazyReaders(storage, graph, shard) as readers:
            samples = upstream_samples(storage, graph, stage, shard, readers)
        for sample in sorted(samples, key=lambda s: s.sample_id):
            rows.append({**dict(sample.columns.items()), "sample_id": sample.sample_id, "shard": shard})
    return rows


@contextmanager
def open_upstream(storage: Storage, graph: StageGraph, stage: str, shard: int) -> Iterator[list[Sample]]:
    """``upstream_samples`` of one shard, every upstream column included, with their upstream tars open while the
    block runs (for tools that look at a stage's inputs without running it, such as the report)."""
    with _LazyReaders(storage, graph, shard) as readers:
        yield upstream_samples(storage, graph, stage, shard, readers, declared_only=False)


class _LazyReaders:
    """Opens an upstream shard tar only when a sample first reads one of its fields."""

    def __init__(self, storage: Storage, graph: StageGraph, shard: int) -> None:
        self.storage, self.graph, self.shard = storage, graph, shard
        self.open: dict[str, ShardReader] = {}

    def __enter__(self) -> _LazyReaders:
        return self

    def __exit__(self, *exc: object) -> None:
        for reader in self.open.values():
            reader.close()

    def reader_for(self, keys: dict[str, str | None], owners: dict[str, str], reader: str = "",
                   allowed: frozenset[str] | None = None) -> Callable[[str], bytes]:
        """Reads a field from the stage that wrote it, under the sample's key in that stage; a field ``reader`` did
        not declare (not in ``allowed``) is refused."""

        def read(field_name: str) -> bytes:
            stage = owners.get(field_name)
            if stage is None:
                raise KeyError(f"no stage before this one writes {field_name!r}")
            if allowed is not None and field_name not in allowed:
                raise UndeclaredRead(f"stage {reader!r} read field {field_name!r}, which it does not declare: add it "
                                     "to its `reads`")
            key = keys.get(stage)
            if key is None:
                raise KeyError(f"stage {stage} has no sample this one derives from")
            if stage not in self.open:
                self.open[stage] = open_shard(self.storage, self.graph.nodes[stage].tar_path(self.shard))
            return self.open[stage].read(key, field_name)

        return read


class _Lineage:
    """Which upstream sample a sample derives from, across stages that fan one input out into several.

    A stage may turn input ``clip`` into ``clip-swap`` and ``clip-removal`` (rows with ``input_id = clip``);
    the stages after it read ``clip``'s fields and columns from the stages before the fan-out."""

    def __init__(self, tables: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.tables = tables
        self.parent = {
            sid: row["input_id"]
            for rows in tables.values()
            for sid, row in rows.items()
            if row.get("input_id") and row["input_id"] != sid
        }

    def key_in(self, stage: str, sample_id: str) -> str | None:
        key: str | None = sample_id
        while key is not None and key not in self.tables[stage]:
            key = self.parent.get(key)
        return key

    def ok_ids(self, deps: Sequence[str]) -> list[str]:
        """Samples ok in every direct upstream stage, the most derived ids only."""
        candidates = {sid for dep in deps for sid, row in self.tables[dep].items() if row["status"] == Status.OK}
        kept = {
            sid for sid in candidates
            if all((key := self.key_in(dep, sid)) is not None and self.tables[dep][key]["status"] == Status.OK for dep in deps)
        }
        parents = {self.parent[sid] for sid in kept if sid in self.parent}
        return sorted(kept - parents)


def _batches(items: list[Sample], size: int) -> list[list[Sample]]:
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _derives(sample_id: str, source_id: str) -> bool:
    return sample_id == source_id or sample_id.startswith(source_id + "-")


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}" if str(exc) else f"{type(exc).__name__}{where}"

