"""Live metrics of a run on Ray: the scheduler's :class:`~pipeline.scheduler.MetricsSink` through Ray's metrics API.

The driver records them (it sees every event: a shard committed, a try failed, an actor died, the cluster
changed); Ray's metrics agent of the driver's node (the head, under ``ray job submit``) serves them to
Prometheus on its metrics export port (``ray.metrics_port`` for a local Ray, ``ray start --metrics-export-port``
on a cluster), with Ray's ``ray_`` prefix and, for counters, Prometheus' ``_total`` suffix. Every series carries
the tags ``run`` (the config's ``name``) and ``stage``; ``docker/grafana/ffp-dashboard.json`` charts them.

| recorded as | kind | extra tag | what |
|---|---|---|---|
| ``ffp_samples_committed`` | counter | ``status`` | samples in committed shards, by status (its rate: items/s) |
| ``ffp_shards_committed`` | counter | | shards committed by this driver |
| ``ffp_shard_failures`` | counter | ``reason`` | tries that ended without a commit: error, actor_died, out_of_memory, timeout, storage_full |
| ``ffp_actor_deaths`` | counter | | actors that died during a try (killed for memory included) |
| ``ffp_gpu_seconds_held``, ``ffp_gpu_seconds_busy`` | counter | | GPU-seconds the stage's actors held, and spent running shards |
| ``ffp_shard_seconds`` | histogram | | seconds per committed shard, as its worker measured them |
| ``ffp_shards_queued`` | gauge | | shards ready, waiting for an actor |
| ``ffp_shards_in_flight``, ``ffp_actors`` | gauge | | tries running; actors alive (the pool) |
| ``ffp_shards_done``, ``ffp_shards_total``, ``ffp_shards_given_up`` | gauge | | progress, earlier starts included |
| ``ffp_gpu_busy_share`` | gauge | | busy / held GPU-seconds since this driver started (GPU stages only) |
| ``ffp_cluster_nodes``, ``ffp_cluster_cpus``, ``ffp_cluster_gpus`` | gauge | (no ``stage``) | the live nodes |

Ray exports a gauge only while it is set again within two report intervals (``metrics_report_interval_ms``, 10 s
by default): a thread sets the last value of each again every second until the run ends (``close``), so a gauge
that does not change (the cluster, a stage waiting hours on a shard) stays, and those of an ended run go. Nothing
is recorded while Ray is not initialised (a finished run resumes without starting it), and if Ray's metrics cannot
be made the run goes on without them, saying so only in the debug log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from pipeline.scheduler import StageGauges
from pipeline.worker import ShardSummary

log = logging.getLogger("ffp.metrics")

PREFIX = "ffp_"
KEEP_ALIVE_S = 1.0
"""How often the last value of every gauge is set again (Ray drops a gauge not set for two report intervals)."""
SHARD_SECONDS_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800]
"""Bounds of ``ffp_shard_seconds`` (Ray exports a histogram's ``_sum`` from bucket midpoints, not the values: use
the buckets)."""

_STAGE = ("run", "stage")
_GAUGES = {
    "shards_queued": "shards ready to run, waiting for an actor (or for a stage after it: backpressure)",
    "shards_in_flight": "shard tries running now",
    "actors": "actors of the stage alive now (its pool, idle ones included)",
    "shards_done": "shards committed and current, earlier starts of the run included",
    "shards_total": "shards of the stage",
    "shards_given_up": "shards that gave up in this start (their downstream shards cannot run)",
    "gpu_busy_share": "share of the GPU-seconds the stage's actors held since the driver started spent running shards",
}


class _Instruments:
    """The Ray metric objects, made once Ray is up."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        def counter(name: str, description: str, *extra: str) -> Any:
            return Counter(PREFIX + name, description, tag_keys=(*_STAGE, *extra))

        self.samples = counter("samples_committed", "samples in committed shards, by status", "status")
        self.shards = counter("shards_committed", "shards committed by this driver")
        self.failures = counter("shard_failures", "shard tries that ended without a commit, by reason", "reason")
        self.deaths = counter("actor_deaths", "actors that died during a shard try")
        self.gpu_held = counter("gpu_seconds_held", "GPU-seconds the stage's actors held")
        self.gpu_busy = counter("gpu_seconds_busy", "GPU-seconds the stage's actors spent running shards")
        self.shard_seconds = Histogram(PREFIX + "shard_seconds", "seconds per committed shard (its worker's measure)",
                                       boundaries=SHARD_SECONDS_BUCKETS, tag_keys=_STAGE)
        self.gauges = {name: Gauge(PREFIX + name, text, tag_keys=_STAGE) for name, text in _GAUGES.items()}
        self.cluster = {key: Gauge(f"{PREFIX}cluster_{key}", f"live {key} of the cluster", tag_keys=("run",))
                        for key in ("nodes", "cpus", "gpus")}


class RayMetrics:
    """The scheduler's metrics sink on Ray (``ray.util.metrics``), recorded by the driver, tagged ``run`` and
    ``stage``. See the module's table for the names."""

    def __init__(self, run: str) -> None:
        self.run = run
        self._instruments: _Instruments | None = None
        self._off = False
        self._gpu_reported: dict[str, tuple[float, float]] = {}  # stage -> (held, busy) GPU-seconds counted so far
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}  # (gauge, tags) -> its last value
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None

    def _get(self) -> _Instruments | None:
        """The instruments, made at the first record after Ray is up; None when metrics are unavailable."""
        if self._instruments is None and not self._off:
            if not ray.is_initialized():
                return None  # nothing runs before Ray starts (it starts with the first shard ready to run)
            try:
                self._instruments = _Instruments()
            except Exception as exc:  # noqa: BLE001 (metrics must never stop a run)
                log.debug("live metrics off: Ray's metrics could not be made (%s)", exc)
                self._off = True
                return None
            self._keeper = threading.Thread(target=self._keep_alive, name="ffp-metrics", daemon=True)
            self._keeper.start()
        return self._instruments

    def _set(self, gauge: Any, name: str, value: float | None, tags: dict[str, str]) -> None:
        if value is None:
            return
        gauge.set(value, tags=tags)
        with self._lock:
            self._last[(name, tuple(sorted(tags.items())))] = value

    def _keep_alive(self) -> None:
        while not self._closed.wait(KEEP_ALIVE_S):
            with self._lock:
                last = list(self._last.items())

            def record(m: _Instruments, last: list[Any] = last) -> None:
                for (name, tags), value in last:
                    gauge = m.cluster[name] if name in m.cluster else m.gauges[name]
                    gauge.set(value, tags=dict(tags))

            self._record("the gauges again", record)

    def close(self) -> None:
        """The run ended: the gauges are no longer set again (Ray drops them two report intervals later)."""
        self._closed.set()
        if self._keeper is not None:
            self._keeper.join(timeout=10)

    def _record(self, what: str, record: Any) -> None:
        instruments = self._get()
        if instruments is None:
            return
        try:
            record(instruments)
        except Exception as exc:  # noqa: BLE001 (metrics must never stop a run)
            log.debug("live metrics off: recording %s failed (%s)", what, exc)
            self._off, self._instruments = True, None

    def _tags(self, stage: str, **extra: str) -> dict[str, str]:
        return {"run": self.run, "stage": stage, **extra}

    def shard_committed(self, summary: ShardSummary) -> None:
        def record(m: _Instruments) -> None:
            for status, count in summary.counts.items():
                if count > 0:
                    m.samples.inc(count, tags=self._tags(summary.stage, status=str(status)))
            m.shards.inc(1, tags=self._tags(summary.stage))
            m.shard_seconds.observe(summary.seconds, tags=self._tags(summary.stage))

        self._record("a commit", record)

    def shard_failed(self, stage: str, reason: str) -> None:
        def record(m: _Instruments) -> None:
            m.failures.inc(1, tags=self._tags(stage, reason=reason))
            if reason in ("actor_died", "out_of_memory"):
                m.deaths.inc(1, tags=self._tags(stage))

        self._record("a failure", record)

    def capacity(self, nodes: Sequence[Mapping[str, float]]) -> None:
        def record(m: _Instruments) -> None:
            values = {"nodes": len(nodes), "cpus": sum(n["CPU"] for n in nodes), "gpus": sum(n["GPU"] for n in nodes)}
            for key, value in values.items():
                self._set(m.cluster[key], key, value, {"run": self.run})

        self._record("the capacity", record)

    def stages(self, gauges: Sequence[StageGauges]) -> None:
        def record(m: _Instruments) -> None:
            for g in gauges:
                tags = self._tags(g.stage)
                values = {"shards_queued": g.queued, "shards_in_flight": g.in_flight, "actors": g.actors,
                          "shards_done": g.done, "shards_total": g.total, "shards_given_up": g.given_up,
                          "gpu_busy_share": g.gpu_busy_share}
                for name, value in values.items():
                    self._set(m.gauges[name], name, value, tags)  # None (no GPU): not set
                held, busy = self._gpu_reported.get(g.stage, (0.0, 0.0))
                if g.gpu_seconds_held > held:
                    m.gpu_held.inc(g.gpu_seconds_held - held, tags=tags)
                if g.gpu_seconds_busy > busy:
                    m.gpu_busy.inc(g.gpu_seconds_busy - busy, tags=tags)
                self._gpu_reported[g.stage] = (max(held, g.gpu_seconds_held), max(busy, g.gpu_seconds_busy))

        self._record("the stages", record)
