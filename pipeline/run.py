"""Starting, resuming and retrying a run: the run folder's fixed parts, then the driver (DESIGN §2, §4)."""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, NamedTuple

import yaml

from manifests import layout, retry
from manifests.layout import RUN_YAML
from manifests.lease import Lease, LeaseLost
from manifests.storage import Storage, StorageFull
from pipeline.config import ConfigError, PipelineConfig, config_to_yaml, override_config, validate_config
from pipeline.graph import StageGraph, build_graph, digest
from pipeline.plan import RunPlan, State, check_fixed_layout, retry_statuses

if TYPE_CHECKING:  # ray is imported only when work runs (status, plan and query stay light)
    from pipeline.runner import Listener, RunReport

class StaleError(RuntimeError):
    """Stages whose committed shards were made with other params; never mixed in silently."""

    def __init__(self, stages: list[str]) -> None:
        super().__init__(
            f"stages {', '.join(stages)} have shards committed with another fingerprint (changed params, models "
            "or code). Run again with --rerun-stale to redo them and everything after them, or use a new run folder."
        )
        self.stages = stages


def load_run_config(run_dir: str, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The config of a run folder, pointing at that folder: a run copied or moved elsewhere (another disk, a
    bucket) is read where it is now, not at the ``run_dir`` its run.yaml was written with. ``overrides``: ``--set``
    changes to it (``ffp run RUN --set ...``); the GPU plan is not applied again (run.yaml holds its result)."""
    storage = Storage(run_dir)
    if not storage.exists(RUN_YAML):
        raise ConfigError(f"{run_dir}: no {RUN_YAML}; is this a run folder?")
    data = yaml.safe_load(storage.read_bytes(RUN_YAML))
    if isinstance(data, dict):
        data["run_dir"] = run_dir
    source = f"{run_dir}/{RUN_YAML}"
    config = validate_config(data, source=source)
    return override_config(config, overrides, source=source) if overrides else config


RUN_YAML_HEADER = "# ffp: the config of the run at "
"""run.yaml's first line names the run it belongs to, so that a copy of it used as a config is known for one."""


def run_yaml_text(config: PipelineConfig) -> str:
    """What run.yaml holds: a header naming the run and how to change it, then the resolved config."""
    url = config.run_dir
    return (f"{RUN_YAML_HEADER}{url}\n# resume it: ffp run {url}; change a param: ffp run {url} --set "
            "stages.STAGE.params.KEY=VALUE (preview with ffp plan)\n" + config_to_yaml(config))


def run_yaml_origin(text: str) -> str | None:
    """The run a config file was written for as its run.yaml (None: a config written by hand)."""
    first = text.split("\n", 1)[0]
    return first[len(RUN_YAML_HEADER):].strip() or None if first.startswith(RUN_YAML_HEADER) else None


class OpenedRun(NamedTuple):
    """A run folder read against its config, once: the config loaded and every stage's params validated (in the
    graph's nodes), the committed state read. Passed down to whatever acts on the run (``execute``, the status),
    so no one opens it again. Unpacks as ``storage, graph, plan``."""

    storage: Storage
    graph: StageGraph
    plan: RunPlan

    @property
    def config(self) -> PipelineConfig:
        return self.graph.config


def open_run(config: PipelineConfig) -> OpenedRun:
    """Read a run folder's state against a config, writing nothing."""
    storage = Storage(config.run_dir)
    if storage.exists(RUN_YAML):
        previous = load_run_config(config.run_dir)
        fixed = check_fixed_layout(previous, config)
        if fixed:
            raise ConfigError(
                f"{config.run_dir} was started with other {', '.join(fixed)}; those fix the sample ids and "
                "shards of a run, so they cannot change in it (params can: ffp run RUN --set ...). For other "
                f"{', '.join(fixed)}, use a new run folder (--out NEW), or restore them as run.yaml has them."
            )
    graph = build_graph(config)
    return OpenedRun(storage, graph, RunPlan(storage, graph))


def execute(
    config: PipelineConfig | OpenedRun,
    *,
    rerun_stale: bool = False,
    retry_stages: set[str] | None = None,
    retry_quarantined: bool = False,
    retry_permanent: bool = False,
    listener: Listener | None = None,
    verbose: bool = False,
) -> tuple[RunPlan, RunReport]:
    """Run (or resume) a pipeline until every shard is committed or has given up. ``config``: a config, or the run
    already opened with it (``open_run``; a CLI that shows progress opens it once and hands it down). ``verbose``:
    the actors' output streams to this terminal instead of their log files (``pipeline/actor_logs.py``)."""
    opened = config if isinstance(config, OpenedRun) else open_run(config)
    storage, plan = opened.storage, opened.plan
    stale = plan.stale_stages()
    if stale and not rerun_stale:
        raise StaleError(stale)
    # one driver per run folder: the lease is taken before anything is written (LeaseHeld names the holder)
    lease = Lease(storage)
    replaced = lease.acquire()
    try:
        if replaced is not None and listener is not None:
            listener("lease_taken_over", replaced)
        plan, report = _drive(
            opened, lease, retry_stages=retry_stages,
            retry=retry_statuses(quarantined=retry_quarantined, permanent=retry_permanent), listener=listener,
            verbose=verbose,
        )
    finally:
        lease.release()  # a no-op when the lease was lost: it is the new holder's
    return plan, report


def _drive(
    opened: OpenedRun, lease: Lease, *, retry_stages: set[str] | None, retry: frozenset[str],
    listener: Listener | None, verbose: bool,
) -> tuple[RunPlan, RunReport]:
    storage, graph, plan = opened
    config = opened.config
    _clean_leftovers(storage, plan)
    _write_run_yaml(storage, config)
    plan.save_sources()
    from pipeline.runner import Driver, connect_ray

    report = Driver(
        storage, graph, plan, retry_stages=retry_stages, listener=_fenced(lease, listener), verbose=verbose,
        lease_token=lease.token,
        connect=lambda: connect_ray(config.ray, verbose=verbose),
        retry=retry,
    ).run()
    lease.check()  # a driver that lost its lease finalizes nothing and writes no run log
    if not report.halted:  # halted: the storage is full, no dataset files now
        for name in graph.order:
            _finalize(storage, plan, name)
        # the committed state read afresh (same graph: nothing is validated again), which also leaves the derived
        # caches in index/ current for the next start, as the status that follows a run always has
        plan = RunPlan(storage, graph)
    log = {
        "seconds": report.seconds, "actor_deaths": report.actor_deaths, "oom_deaths": report.oom_deaths,
        "timeouts": report.timeouts,
        "peak_actors": report.peak_actors, "cluster": report.cluster, "unplaceable": report.unplaceable,
        "halted": report.halted, "errors": {f"{s}/{n}": e for (s, n), e in report.errors.items()},
        "blocked": [f"{s}/{n}" for s, n in report.blocked], "shards": [asdict(s) for s in report.summaries],
        "retries": run_retries(report.summaries),
        "lease": lease.record(),
    }
    lease.check()
    try:
        storage.write_bytes(layout.run_log(_stamp()), json.dumps(log, indent=1).encode())
        note_clean_end(storage, report)
    except StorageFull:
        if not report.halted:
            raise
    return plan, report


def _fenced(lease: Lease, listener: Listener | None) -> Listener:
    """The scheduler's listener, stopping the run (``LeaseLost`` out of the scheduler's loop) as soon as the lease
    is known lost: a renewal found another holder's token, or a worker refused to commit for that reason."""

    def listen(event: str, data: object) -> None:
        if event == "lease_lost" and isinstance(data, tuple):
            lease.lost = lease.lost or str(data[-1])
        if lease.lost:
            raise LeaseLost(lease.lost)
        if listener is not None:
            listener(event, data)

    return listen


def _write_run_yaml(storage: Storage, config: PipelineConfig) -> None:
    text = run_yaml_text(config)
    if storage.exists(RUN_YAML):
        old = storage.read_bytes(RUN_YAML).decode()
        if old == text:
            return
        storage.write_bytes(layout.previous_run_yaml(_stamp()), old.encode())
    storage.write_bytes(RUN_YAML, text.encode())


def run_retries(summaries: list) -> dict[str, int]:
    """Storage calls retried in this run, per kind of transient error: every shard's (each counted in its
    worker's process) and the driver's own."""
    total = retry.counts()  # this driver process's (a driver runs one run)
    for summary in summaries:
        total = retry.add(total, getattr(summary, "retries", {}))
    return total


def last_run_retries(storage: Storage) -> dict[str, int]:
    """The storage retries of the run folder's last run log, per kind (empty: none, or no log yet); for
    ``ffp status``."""
    logs = storage.list(posixpath.dirname(layout.run_log("x")), pattern=posixpath.basename(layout.run_log("*")))
    if not logs:
        return {}
    return dict(json.loads(storage.read_bytes(logs[-1])).get("retries") or {})


def _stamp() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def note_clean_end(storage: Storage, report: RunReport) -> None:
    """The last write of a run: ``layout.ENDED_CLEAN`` when every shard was resolved (none gave up, nothing halted),
    which spares the next start the walk of the stage and manifest folders (``_clean_leftovers``)."""
    if report.ok and not report.halted:
        storage.write_bytes(layout.ENDED_CLEAN, b"")


def _clean_leftovers(storage: Storage, plan: RunPlan) -> None:
    """Remove what killed processes of earlier starts left: temporaries of any write (one driver per run, so
    no writer is alive now) and ``_partial/`` folders of shards that did commit. After a run that ended clean
    (``layout.ENDED_CLEAN``) the stage and manifest folders, which hold nearly every file of a run (656K at 3M
    samples), are not walked: no temporary can be there."""
    if storage.exists(layout.ENDED_CLEAN):
        storage.remove(layout.ENDED_CLEAN)  # before anything is written: this start may not end clean
        skipped = {layout.MANIFESTS_DIR, *(node.folders.tars.split("/", 1)[0] for node in plan.graph.nodes.values())}
        storage.remove_temporaries()
        for folder in storage.folders():
            if folder not in skipped:
                storage.remove_temporaries(folder, recursive=True)
    else:
        storage.remove_temporaries(recursive=True)
    for stage in plan.graph.order:
        checkpoints = plan.graph.nodes[stage].folders.checkpoints
        for folder in storage.list(checkpoints, pattern=layout.SHARD_PATTERN):
            if plan.state(stage, layout.shard_of(folder)).state == State.DONE:
                storage.remove(folder, recursive=True)
        if storage.exists(checkpoints) and not storage.walk_files(checkpoints):
            storage.remove(checkpoints, recursive=True)


def _finalize(storage: Storage, plan: RunPlan, stage: str) -> None:
    """Run a stage's finalize hook once per set of committed shards (a no-op rerun rewrites nothing)."""
    shards = list(plan.shards(stage))
    if len(plan.done_shards(stage)) != len(shards):
        return
    done = digest([plan.commits[(stage, shard)].tar_sha256 + plan.commits[(stage, shard)].fingerprint for shard in shards])
    marker = layout.finalized_marker(stage)
    node = plan.graph.nodes[stage]
    outputs_there = all(storage.exists(rel) for rel in node.cls.finalize_outputs_for(node.params))
    if outputs_there and storage.exists(marker) and storage.read_bytes(marker).decode() == done:
        return
    node.cls.finalize(stage, storage, node.params)
    storage.write_bytes(marker, done.encode())
