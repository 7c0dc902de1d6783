"""Live metrics of a run that lasts days: what the scheduler tells its metrics sink (in-process, against the
manifests), the same served by Ray's metrics agent during a real run on Ray (scraped as Prometheus would), and
``ffp status --watch``."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.status import StatusWatch, committed_samples
from manifests import layout
from manifests.storage import Storage
from pipeline.config import PipelineConfig, config_to_yaml
from pipeline.executors import InProcessExecutor
from pipeline.graph import build_graph
from pipeline.plan import RunPlan
from pipeline.scheduler import MetricsSink, RunReport, Scheduler, StageGauges
from pipeline.worker import ShardSummary, ShardTask, ShardWorker
from tests.conftest import ffp_cli, make_config, manifest_rows, run_local, synth_config

STAGES = ["ingest", "augment", "export"]


# The scheduler's calls to its metrics sink (in-process executor) ---------------------------------------------


class Recording:
    """A metrics sink that keeps every call."""

    def __init__(self) -> None:
        self.committed: list[ShardSummary] = []
        self.failures: list[tuple[str, str]] = []
        self.nodes: list[list[dict[str, float]]] = []
        self.frames: list[list[StageGauges]] = []
        self.closed = 0

    def shard_committed(self, summary: ShardSummary) -> None:
        self.committed.append(summary)

    def shard_failed(self, stage: str, reason: str) -> None:
        self.failures.append((stage, reason))

    def capacity(self, nodes: Sequence[Mapping[str, float]]) -> None:
        self.nodes.append([dict(node) for node in nodes])

    def stages(self, gauges: Sequence[StageGauges]) -> None:
        assert not self.closed, "told after the end of the run"
        self.frames.append(list(gauges))

    def close(self) -> None:
        self.closed += 1

    def samples(self, stage: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for summary in self.committed:
            if summary.stage == stage:
                out.update(summary.counts)
        return +out

    def series(self, stage: str, field: str) -> list[Any]:
        return [getattr(next(g for g in frame if g.stage == stage), field) for frame in self.frames]


def run_with_sink(config: PipelineConfig) -> tuple[RunReport, Recording]:
    storage = Storage(config.run_dir)
    graph = build_graph(config)
    plan = RunPlan(storage, graph)
    plan.save_sources()
    sink: MetricsSink = Recording()
    report = Scheduler(storage, graph, plan, InProcessExecutor(storage, graph), metrics=sink).run()
    assert isinstance(sink, Recording)
    return report, sink


def manifest_counts(run_dir: Path | str, stage: str) -> Counter[str]:
    return Counter(row["status"] for row in manifest_rows(run_dir, stage))


def manifest_shards(run_dir: Path | str, stage: str) -> int:
    return len(list(Path(run_dir, layout.manifests_dir(stage)).glob(layout.MANIFEST_PATTERN)))


def test_the_sink_counts_what_the_manifests_hold_and_follows_queues_and_pools(tmp_path: Path, demo_vos: Path) -> None:
    """3 shards per stage, one worker each: every commit is told once with its samples by status (their sums are the
    manifests' counts), each stage's queue rises and falls back to 0, and at the end nothing is in flight, no
    worker is alive and every shard is done."""
    config = synth_config(tmp_path / "run", demo_vos, shard_size=2)
    report, sink = run_with_sink(config)
    assert report.ok, (report.errors, report.blocked)
    for stage in STAGES:
        assert sink.samples(stage) == manifest_counts(tmp_path / "run", stage), stage
        assert sum(s.stage == stage for s in sink.committed) == manifest_shards(tmp_path / "run", stage) == 3
        queued = [0, *sink.series(stage, "queued")]
        rises = [b > a for a, b in itertools.pairwise(queued)]
        falls = [b < a for a, b in itertools.pairwise(queued)]
        assert any(rises) and any(falls) and queued[-1] == 0, (stage, queued)
        assert max(sink.series(stage, "in_flight")) == 1 and max(sink.series(stage, "actors")) == 1, stage
        done = sink.series(stage, "done")
        assert done == sorted(done) and done[0] == 0 and done[-1] == 3, (stage, done)
    last = {g.stage: g for g in sink.frames[-1]}
    assert all((g.in_flight, g.actors, g.queued, g.given_up, g.total) == (0, 0, 0, 0, 3) for g in last.values()), last
    assert sink.failures == [] and sink.closed == 1
    assert sink.nodes and sink.nodes[0] == InProcessExecutor(Storage(config.run_dir), build_graph(config)).nodes()


def test_a_worker_that_dies_counts_a_death_and_its_shard_is_still_counted_once(
        tmp_path: Path, demo_vos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker of augment's shard 1 ends (``SystemExit``: the in-process executor's death of a worker) on its
    first try: one ``actor_died`` failure, the shard retried on a new worker and counted once when it commits."""
    real = ShardWorker.run_shard
    killed: list[tuple[str, int]] = []

    def dies_once(self: ShardWorker, task: ShardTask) -> ShardSummary:
        if (task.stage, task.shard) == ("augment", 1) and not killed:
            killed.append((task.stage, task.shard))
            raise SystemExit(9)
        return real(self, task)

    monkeypatch.setattr(ShardWorker, "run_shard", dies_once)
    config = synth_config(tmp_path / "run", demo_vos, shard_size=2)
    report, sink = run_with_sink(config)
    assert killed == [("augment", 1)] and report.ok and report.actor_deaths == 1
    assert sink.failures == [("augment", "actor_died")]
    assert [s.shard for s in sink.committed if s.stage == "augment"].count(1) == 1
    for stage in STAGES:
        assert sink.samples(stage) == manifest_counts(tmp_path / "run", stage), stage
    assert {(g.stage, g.done) for g in sink.frames[-1]} == {(stage, 3) for stage in STAGES}


def test_gpu_seconds_busy_are_the_shards_share_of_the_gpu_seconds_held(tmp_path: Path, demo_vos: Path) -> None:
    """augment's worker holds half a GPU: its busy GPU-seconds are at least half the seconds its first shard ran
    (measured by the worker), and no more than what it held; a stage without GPUs has neither."""
    config = synth_config(tmp_path / "run", demo_vos, shard_size=2)
    config.stages["augment"].resources.gpus = 0.5
    report, sink = run_with_sink(config)
    assert report.ok
    last = {g.stage: g for g in sink.frames[-1]}
    augment = last["augment"]
    first = next(s for s in sink.committed if s.stage == "augment")
    assert 0.5 * first.seconds <= augment.gpu_seconds_busy <= augment.gpu_seconds_held, augment
    assert augment.gpu_busy_share is not None and 0 < augment.gpu_busy_share <= 1
    assert (last["ingest"].gpu_seconds_held, last["ingest"].gpu_busy_share) == (0.0, None)


# The same on Ray, scraped from the metrics agent ------------------------------------------------------------


def test_ray_metrics_record_nothing_and_say_nothing_without_ray(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Before Ray is up (a finished run resumes without starting it) nothing is made or recorded; when Ray's metrics
    cannot be made the run goes on without them, with one debug line."""
    import ray

    from pipeline import metrics

    assert not ray.is_initialized()
    sink = metrics.RayMetrics("r")
    summary = ShardSummary("s", 0, counts={"ok": 2}, seconds=1.0)
    gauges = [StageGauges("s", 1, 1, 1, 0, 2, 0, 4.0, 1.0)]
    with caplog.at_level("DEBUG", logger="ffp.metrics"):
        for call in range(2):
            sink.shard_committed(summary)
            sink.shard_failed("s", "error")
            sink.capacity([{"CPU": 2.0, "GPU": 0.0}])
            sink.stages(gauges)
            assert sink._instruments is None and sink._keeper is None
            if call == 0:
                assert not caplog.records
                monkeypatch.setattr(metrics.ray, "is_initialized", lambda: True)
                monkeypatch.setattr(metrics, "_Instruments", lambda: 1 / 0)
        sink.close()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "live metrics off: Ray's metrics could not be made (division by zero)")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]
TAGS = ("run", "stage", "status", "reason")


def scrape(port: int) -> Scrape:
    """The ``ffp`` series of a metrics agent, by (exported name, our tags), summed over Ray's own labels."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_ffp_"):
                key = (sample.name, frozenset((k, v) for k, v in sample.labels.items() if k in TAGS))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def value(scraped: Scrape, name: str, **tags: str) -> float:
    """The sum of the series of ``name`` that carry these tags (0 if none: a counter not yet incremented)."""
    want = set(tags.items())
    return sum(v for (n, labels), v in scraped.items() if n == name and want <= labels)


def poll_scrape(port: int, condition: Callable[[Scrape], bool], what: str, *, alive: Callable[[], bool],
                timeout: float = 180.0) -> Scrape:
    """Scrape until ``condition`` holds (Ray exports every ``metrics_report_interval_ms``); fail at the deadline or
    when the run is no longer alive to make it hold."""
    deadline = time.monotonic() + timeout
    while True:
        scraped = scrape(port)
        if condition(scraped):
            return scraped
        assert alive(), f"the run ended before {what}: {sorted(scraped.items())}"
        assert time.monotonic() < deadline, f"no scrape showed {what} in {timeout:g} s: {sorted(scraped.items())}"
        time.sleep(0.2)


HOLD_STAGES = ["src", "light", "gpu"]


def committed_counts(run_dir: Path, stage: str) -> tuple[set[int], Counter[str]]:
    """The shards a stage's manifests hold, and their samples by status."""
    rows = manifest_rows(run_dir, stage)
    return {row["shard"] for row in rows}, Counter(row["status"] for row in rows)


def dashboard_metrics() -> set[str]:
    """The metric names the Grafana dashboard's queries use."""
    import re

    dashboard = json.loads((Path(__file__).resolve().parents[1] / "docker/grafana/ffp-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return {name for expr in exprs for name in re.findall(r"\bray_ffp_\w+", expr)}


@pytest.mark.slow
def test_a_run_on_ray_serves_its_live_metrics_on_the_metrics_port(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on a local Ray started with ``ray.metrics_port``: hold_source (6 samples, shards of 4) -> hold -> a hold
    stage on one logical GPU. Shard 1 of the source waits at its first sample for a gate file, so mid-run every
    stage has committed shard 0 and nothing else; the hold stage's actor dies at sample 1 each time (3 deaths, then
    the sample is quarantined). The agent's Prometheus text then shows each stage's counts equal to the manifests'
    (by status), the deaths, the source's try in flight and the GPU stage's busy share. Once the gate opens the run
    ends, and the counters rise to the manifests' final counts. Every metric the Grafana dashboard queries is one Ray
    exported. Ray is shut down after, and its processes are gone."""
    import ray

    from pipeline.config import RayOptions
    from pipeline.run import execute
    from pipeline.runner import connect_ray
    from tests.faults.conftest import psutil

    assert not ray.is_initialized(), "another test left Ray running in this process"
    port, gate, run_dir = free_port(), tmp_path / "gate", tmp_path / "run"
    faults = [{"at": "process", "stage": "src", "sample": "s0000004", "do": "hold", "path": str(gate)},
              {"at": "process", "stage": "light", "sample": "s0000001", "do": "exit"}]
    monkeypatch.setenv("FFP_FAULTS", json.dumps(faults))  # the actors inherit it from the Ray started below
    monkeypatch.setenv("RAY_metrics_report_interval_ms", "1000")  # Ray's default is 10 s
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = make_config(run_dir, inputs=[], shard_size=4, max_attempts=3, stages={
        "src": {"type": "hold_source", "params": {"samples": 6}},
        "light": {"type": "hold", "params": {"seconds": 0.05}},
        "gpu": {"type": "hold", "params": {"seconds": 0.2}, "resources": {"gpus": 1}},
    })
    config.ray = RayOptions(num_cpus=3, num_gpus=1, metrics_port=port)
    run = "test"
    result: dict[str, Any] = {}

    def drive() -> None:
        try:
            result["done"] = execute(config)
        except BaseException as exc:  # noqa: BLE001 (handed to the test's thread)
            result["error"] = exc

    def samples(scraped: Scrape, stage: str) -> Counter[str]:
        return +Counter({status: int(value(scraped, "ray_ffp_samples_committed_total", run=run, stage=stage,
                                           status=status)) for status in ("ok", "filtered", "failed", "quarantined")})

    connect_ray(config.ray)  # here, in the main thread; execute's own connect then finds it up
    ours = psutil.Process().children(recursive=True)
    driver = threading.Thread(target=drive, daemon=True)
    try:
        driver.start()

        def shard_0_everywhere(m: Scrape) -> bool:
            # the stage gauges (GPU seconds among them) are reported on the driver's tick, not at each commit: wait
            # for the tick after the GPU stage's commit too
            return all(value(m, "ray_ffp_shards_committed_total", run=run, stage=s) == 1 for s in HOLD_STAGES) and \
                value(m, "ray_ffp_shards_in_flight", run=run, stage="src") == 1 and \
                value(m, "ray_ffp_gpu_seconds_busy_total", run=run, stage="gpu") > 0

        mid = poll_scrape(port, shard_0_everywhere, "shard 0 committed by every stage", alive=driver.is_alive)
        mid_counts = {}
        for stage in HOLD_STAGES:
            shards, mid_counts[stage] = committed_counts(run_dir, stage)
            assert shards == {0} and samples(mid, stage) == mid_counts[stage], (stage, shards, mid_counts[stage])
            assert value(mid, "ray_ffp_shards_total", run=run, stage=stage) == 2, stage
        assert mid_counts == {"src": {"ok": 4}, "light": {"ok": 3, "quarantined": 1}, "gpu": {"ok": 3}}
        assert value(mid, "ray_ffp_actor_deaths_total", run=run, stage="light") == 3
        assert value(mid, "ray_ffp_shard_failures_total", run=run, stage="light", reason="actor_died") == 3
        assert value(mid, "ray_ffp_actors", run=run, stage="src") == 1
        assert value(mid, "ray_ffp_cluster_gpus", run=run) == 1 and value(mid, "ray_ffp_cluster_nodes", run=run) == 1
        share = value(mid, "ray_ffp_gpu_busy_share", run=run, stage="gpu")
        busy, held = (value(mid, f"ray_ffp_gpu_seconds_{k}_total", run=run, stage="gpu") for k in ("busy", "held"))
        assert 0 < share <= 1 and 0 < busy <= held, (share, busy, held)
        assert value(mid, "ray_ffp_shard_seconds_count", run=run, stage="gpu") == 1

        gate.touch()
        driver.join(timeout=180)
        assert not driver.is_alive(), "the run did not end after its gate opened"
        assert "error" not in result, result.get("error")
        _, report = result["done"]
        assert report.ok and report.actor_deaths == 3, (report.errors, report.blocked, report.actor_deaths)

        def every_shard(m: Scrape) -> bool:
            return all(value(m, "ray_ffp_shards_committed_total", run=run, stage=s) == 2 for s in HOLD_STAGES)

        final = poll_scrape(port, every_shard, "every shard committed", alive=lambda: True, timeout=60)
        for stage in HOLD_STAGES:
            shards, counts = committed_counts(run_dir, stage)
            assert shards == {0, 1} and samples(final, stage) == counts, (stage, samples(final, stage), counts)
            assert counts["ok"] > mid_counts[stage]["ok"], (stage, counts)  # the counters moved
        assert committed_counts(run_dir, "light")[1] == {"ok": 5, "quarantined": 1}
        exported = {name for name, _ in final} | {name for name, _ in mid}
        assert dashboard_metrics() <= exported, dashboard_metrics() - exported
    finally:
        gate.touch()
        driver.join(timeout=120)
        ours += [p for p in psutil.Process().children(recursive=True) if p not in ours]
        ray.shutdown()
        _, alive_procs = psutil.wait_procs(ours, timeout=60)
        assert not alive_procs, f"Ray processes outlived ray.shutdown(): {[p.pid for p in alive_procs]}"


# ffp status --watch --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, demo_vos: Path) -> Path:
    """A finished synthetic run (3 shards per stage) with the ``run.yaml`` a run writes."""
    root = tmp_path_factory.mktemp("watch")
    config = synth_config(root / "run", demo_vos, shard_size=2)
    run_local(config)
    (root / "run" / layout.RUN_YAML).write_text(config_to_yaml(config))
    return root / "run"


def test_status_watch_on_a_finished_run_exits_by_itself_with_the_final_table(finished_run: Path) -> None:
    done = ffp_cli("status", str(finished_run), "--watch", "--every", "0.2", timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for stage in STAGES:
        [row] = [line for line in lines if line.strip("│┃ ").startswith(stage)]
        assert "3/3" in row and "done" in row, row
    assert "now samples/s" in done.stdout and "complete: every shard of every stage is committed" in done.stdout


def test_status_watch_gives_the_rates_since_the_last_look_and_sees_a_run_end(finished_run: Path, tmp_path: Path) -> None:
    """The watch's looks at a run folder: export's shard 2 appears between two looks 4 s apart (its samples and one
    shard in 4 s), then the run is complete; a run log written after the watch began says a run ended."""
    from pipeline.run import load_run_config, open_run

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    manifest = run / layout.manifest_path("export", 2)
    aside = tmp_path / "aside.parquet"
    manifest.rename(aside)
    opened = open_run(load_run_config(str(run)))
    now = [100.0]
    watch = StatusWatch(opened.storage, opened.graph, clock=lambda: now[0])
    first = watch.frame()
    by_stage = {s.stage: s for s in first.statuses}
    assert first.rates is None and not first.complete and not first.ended
    assert (by_stage["export"].shards_done, by_stage["ingest"].shards_done) == (2, 3)
    before = committed_samples(by_stage["export"])
    aside.rename(manifest)
    now[0] += 4.0
    second = watch.frame()
    assert second.complete and not second.ended and second.rates is not None
    after = committed_samples({s.stage: s for s in second.statuses}["export"])
    assert after > before
    assert second.rates["export"].samples_per_s == (after - before) / 4 and second.rates["export"].shards_per_s == 0.25
    assert second.rates["ingest"].samples_per_s == 0 and second.rates["ingest"].shards_per_s == 0
    Storage(str(run)).write_bytes(layout.run_log("20990101-000000-abcdef"), b"{}")
    assert watch.frame().ended == [layout.run_log("20990101-000000-abcdef")]


def test_status_watch_stops_with_exit_1_when_a_run_ends_with_shards_not_done(
        finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that is not complete, and whose driver writes its run log between two looks: the watch stops there,
    names the log and exits 1."""
    from types import SimpleNamespace

    from app import cli
    from tests.conftest import cli_invoke

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / layout.manifest_path("export", 2)).unlink()
    log = layout.run_log("20990101-000000-abcdef")
    looks: list[float] = []

    def sleep(seconds: float) -> None:  # between the first look and the second, the run ends
        looks.append(seconds)
        Storage(str(run)).write_bytes(log, b"{}")

    monkeypatch.setattr(cli, "time", SimpleNamespace(sleep=sleep, strftime=time.strftime))
    code, out, err = cli_invoke(["status", str(run), "--watch", "--every", "7"])
    assert code == 1 and looks == [7.0], (code, looks, out, err)
    assert f"the run ended with shards not done: see {run / log}" in out
    [row] = [line for line in out.splitlines() if line.strip("│┃ ").startswith("export")]
    assert "2/3" in row
