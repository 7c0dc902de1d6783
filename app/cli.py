"""``ffp``: the one entry point (DESIGN §7). Also ``python -m pipeline``."""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from app.status import (
    StageStatus,
    StatusWatch,
    WatchFrame,
    permanent_failures,
    run_status,
    stage_statuses,
    status_cells,
    status_table_columns,
)
from manifests.layout import actor_log, actor_logs_dir
from manifests.lease import LeaseHeld, LeaseLost, read_lease
from manifests.manifest import Status
from manifests.shards import open_shard
from manifests.storage import Storage, StorageFull
from manifests.verify import verify_run
from media.sources import InputListError
from pipeline.config import (
    ConfigError,
    PipelineConfig,
    config_to_yaml,
    json_schema,
    load_config,
    override_config,
    preset_names,
)
from pipeline.gpus import DEFAULT_MFU
from pipeline.graph import GraphError, build_graph
from pipeline.plan import RunPlan
from pipeline.run import RUN_YAML, StaleError, execute, last_run_retries, load_run_config, open_run, run_yaml_origin

if TYPE_CHECKING:  # ray (through pipeline.runner) is imported only by the commands that run work
    from pipeline.runner import RunReport

# plain help: click's own layout shows a flag as a switch (typer's rich panels print `--json <bool>`)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Generate FFP video-editing training pairs.\n\nExit codes: 0 done; 1 the run could not finish; "
                  "2 usage or config error (nothing ran); 3 finished, with failed or quarantined samples.")
config_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect configs and presets.")
app.add_typer(config_app, name="config")
models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The models of a config at their real size.")
app.add_typer(models_app, name="models")
PIPED_WIDTH = 200
"""Columns of what is printed when stdout is not a terminal (a log, a pipe): wide enough that no table header or
cell is cut to `sta…`, as it would be at the 80 columns rich assumes there."""
console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error line stays one line in CI logs

EXIT_OK, EXIT_NOT_FINISHED, EXIT_USAGE, EXIT_SAMPLES_FAILED = 0, 1, 2, 3
"""Exit codes (README, "Commands"): every shard done and no sample failed; the run could not finish (a shard gave
up, a stage could not be placed, the disk is full, the lease was lost); a usage or config error, nothing run; the
run finished, but some samples failed or were quarantined (listed by the line printed before it exits)."""

ConfigArg = Annotated[Optional[str], typer.Argument(metavar="CONFIG|RUN", help="config YAML, or a run folder to "
                                                   "resume (with --set: to change)")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", metavar="NAME", help="a config shipped with ffp "
                                                    "(ffp config presets)")]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", metavar="RUN", help="the run folder (overrides the "
                                                 "config's run_dir)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY.PATH=VALUE",
                                                     help="override a config value (repeatable); on a run folder, "
                                                     "change the run's params")]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="run folder (local path or fsspec URL)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="stream what the actors and libraries print to this "
                                          "terminal (default: into the run's logs/actors/, one file per actor)")]
GpuOpt = Annotated[Optional[str], typer.Option("--gpu", help="GPU type: a100, h100 or h200 (80, 80, 141 GiB); applies "
                                                "the config's gpu_plans for it (default: the config's gpu, else h100)")]
MfuOpt = Annotated[float, typer.Option("--mfu", min=0.01, max=1.0, help="model FLOPs utilisation assumed for the "
                                       "physics prior (default: about what Wan's published H100 time implies)")]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"ffp {version('ffp')}")
        raise typer.Exit()


@app.callback()
def _options(
    _: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print ffp's version")] = False,
) -> None:
    """The options before the command."""


def main() -> None:
    if not console.is_terminal:
        console.width = max(console.width, PIPED_WIDTH)
    if not err.is_terminal:  # Ray's driver colours the raylet lines it prints (a worker died) unless told not to
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        app()
    except (ConfigError, StaleError, InputListError, GraphError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(2)
    except StorageFull as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        err.print("Free space (or grow the volume), then run the same command again: finished work is kept.")
        sys.exit(1)
    except LeaseHeld as exc:  # a second driver on a live run: refused before it wrote anything
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(2)
    except LeaseLost as exc:  # paused or cut off past the lease's expiry: another driver owns the run now
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        err.print("Another driver took the run over; this one stopped without writing. Follow it with ffp status.")
        sys.exit(1)


def _run_folder(run_dir: str) -> Storage:
    """The run folder, or a clear error when ``run_dir`` is not one."""
    run = Storage(run_dir)
    if not run.exists(RUN_YAML):
        raise ConfigError(f"{run_dir} is not a run folder (no {RUN_YAML}); start one with `ffp run CONFIG`")
    return run


def _resolve_config(config: str | None, preset: str | None, out: str | None, sets: list[str] | None) -> PipelineConfig:
    if config and preset:
        raise ConfigError("give a config file or --preset, not both")
    if config is None and preset is None:
        raise ConfigError("give a config file, a run folder or --preset NAME (presets: " + ", ".join(preset_names()) + ")")
    if preset:
        return load_config(preset=preset, overrides=sets or (), run_dir=out)
    assert config is not None
    run = Storage(config)
    if run.is_folder() and run.exists(RUN_YAML):
        if out is not None:
            raise ConfigError(f"{config} is a run folder: it is the run; --out names the run folder of a config file")
        return load_run_config(config, overrides=sets or ())  # the fixed layout is checked by open_run
    if not Path(config).is_file():
        raise ConfigError(f"{config}: no such config file or run folder")
    cfg = load_config(config, overrides=sets or (), run_dir=out)
    origin = run_yaml_origin(Path(config).read_text())
    if out is None and origin is not None and origin != cfg.run_dir and Storage(origin).exists(RUN_YAML):
        raise ConfigError(
            f"{config} is the run.yaml of the run at {origin}, but its run_dir names {cfg.run_dir}: that would start a "
            f"second run of the same inputs there. To resume or change that run: ffp run {origin} [--set KEY=VALUE]; "
            f"to start a new run from these settings on purpose: ffp run {config} --out {cfg.run_dir}"
        )
    return cfg


# Running -----------------------------------------------------------------------------------------------


@app.command()
def run(
    config: ConfigArg = None,
    preset: PresetOpt = None,
    out: OutOpt = None,
    set_: SetOpt = None,
    rerun_stale: Annotated[bool, typer.Option("--rerun-stale", help="redo stages whose params changed")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run or resume a pipeline: committed shards are skipped, interrupted ones finish from _partial/."""
    cfg = _resolve_config(config, preset, out, set_)
    report, plan = _execute(cfg, rerun_stale=rerun_stale, verbose=verbose)
    statuses = _print_status(cfg.run_dir, plan=plan)
    raise typer.Exit(_exit_code(report, cfg.run_dir, statuses, plan))


@app.command()
def retry(
    run_dir: RunArg,
    stage: Annotated[Optional[list[str]], typer.Option("--stage", help="only this stage (repeatable)")] = None,
    quarantined: Annotated[bool, typer.Option("--quarantined", help="also retry quarantined samples, afresh")] = False,
    permanent: Annotated[bool, typer.Option("--permanent", help="also retry failures marked permanent (an empty file, "
                                            "not a video, ...): for inputs fixed in place")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Rerun only the failed samples (all stages, or --stage); what they feed downstream is updated."""
    cfg = load_run_config(run_dir)
    stages = set(stage or cfg.stages)
    unknown = stages - set(cfg.stages)
    if unknown:
        raise ConfigError(f"unknown stages {sorted(unknown)}; stages: {', '.join(cfg.stages)}")
    report, plan = _execute(cfg, retry_stages=stages, retry_quarantined=quarantined, retry_permanent=permanent,
                            verbose=verbose)
    statuses = _print_status(run_dir, plan=plan)
    raise typer.Exit(_exit_code(report, run_dir, statuses, plan))


def _execute(cfg: PipelineConfig, **kwargs: Any) -> tuple[RunReport, RunPlan]:
    """Run with progress (bars on a terminal, a line per committed shard and a periodic summary otherwise): the
    run is opened once here and handed down (``execute``, then the status)."""
    opened = open_run(cfg)
    graph, plan = opened.graph, opened.plan
    totals = {name: plan.num_shards(name) for name in graph.order}
    tracks = f"{len(cfg.tracks)} tracks ({', '.join(cfg.tracks)})" if len(cfg.tracks) > 1 else " -> ".join(graph.order)
    console.print(f"[bold]ffp[/bold] run [cyan]{escape(cfg.run_dir)}[/cyan]: {tracks}")
    progress = _RunBars(totals) if console.is_terminal else _RunLines(totals, float(os.environ.get(
        "FFP_PROGRESS_EVERY_S", PROGRESS_EVERY_S)))
    with progress:
        plan, report = execute(opened, listener=progress.listen, **kwargs)
    console.print(f"finished in {report.seconds:.1f} s ({report.actor_deaths} actor deaths recovered"
                  + (f", {report.oom_deaths} of them out of memory" if report.oom_deaths else "")
                  + (f", {report.timeouts} shard tries past their time limit" if report.timeouts else "") + ")"
                  + ("" if kwargs.get("verbose") else f"; what the actors printed: {cfg.run_dir}/{actor_logs_dir()}/"))
    return report, plan


PROGRESS_EVERY_S = 60.0
"""Seconds between the summary lines of a run whose output is not a terminal (``FFP_PROGRESS_EVERY_S``)."""


class _RunProgress:
    """What a run shows while it runs: the scheduler's events (``listen``) as progress and notices."""

    def __init__(self, totals: dict[str, int]) -> None:
        self.totals, self.done = totals, dict.fromkeys(totals, 0)

    def __enter__(self) -> _RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def listen(self, event: str, data: Any) -> None:
        if event in ("resolved", "resolved_many"):  # a shard, or (stage, n) found done at the start
            count = data[1] if event == "resolved_many" else 1
            self.done[data[0]] += count
            self.advance(data[0], count)
        elif event == "committed":
            self.committed(data)
        elif event == "shard_error":
            stage, shard, error = data
            self.notice(f"[yellow]{stage}/shard {shard}: {escape(error)}; retrying[/yellow]")
        elif event == "unplaceable":
            stage, why = data
            self.notice(f"[yellow]{stage}: {escape(why)}[/yellow]")
        elif event == "halted":
            stage, shard, error = data
            self.notice(f"[red]{stage}/shard {shard}: {escape(error)}; stopping the run[/red]")
        elif event == "lease_taken_over":
            self.notice(f"[yellow]took over the run's lease from a driver gone quiet ({escape(data.describe())})[/yellow]")

    def advance(self, stage: str, count: int) -> None:
        pass

    def committed(self, summary: Any) -> None:
        pass

    def notice(self, text: str) -> None:
        console.print(text, soft_wrap=True)  # a log line stays one line, however many stages it names


class _RunBars(_RunProgress):
    """A terminal: a bar per stage, gone when the run ends (the status table that follows says the same, once)."""

    def __enter__(self) -> _RunBars:
        self.bars = Progress(TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                             TimeElapsedColumn(), console=console, transient=True)
        self.tasks = {name: self.bars.add_task(name, total=total) for name, total in self.totals.items()}
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(None, None, None)

    def advance(self, stage: str, count: int) -> None:
        self.bars.advance(self.tasks[stage], count)

    def notice(self, text: str) -> None:
        self.bars.console.print(text)


class _RunLines(_RunProgress):
    """A log or a pipe: a line per committed shard, and every ``every`` seconds a line with every stage's shards
    done (no bars, no carriage returns)."""

    def __init__(self, totals: dict[str, int], every: float) -> None:
        super().__init__(totals)
        self.every, self.started, self.stop = every, time.monotonic(), threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="ffp-progress", daemon=True)

    def __enter__(self) -> _RunLines:
        self.ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.ticker.join()

    def _tick(self) -> None:
        while not self.stop.wait(self.every):
            shards = ", ".join(f"{stage} {self.done[stage]}/{total}" for stage, total in self.totals.items())
            self.notice(f"{time.strftime('%H:%M:%S')} progress after {time.monotonic() - self.started:.0f} s: "
                        f"{shards} shards")

    def committed(self, summary: Any) -> None:
        counts = ", ".join(f"{status} {n}" for status, n in sorted(summary.counts.items()) if n) or "no samples"
        self.notice(f"{time.strftime('%H:%M:%S')} {summary.stage}/shard {summary.shard} committed: {counts} "
                    f"({summary.seconds:.1f} s)")


def _exit_code(report: RunReport, run_dir: str, statuses: list[StageStatus] | None = None,
               plan: RunPlan | None = None) -> int:
    """The command's exit code (``EXIT_*``), after saying why it is not 0 and what to do."""
    if report.halted:
        err.print(f"[red]the run stopped:[/red] {escape(report.halted)}")
        err.print(f"Free space (or grow the volume), then run `ffp run {run_dir}` again: finished work is kept, "
                  "and no sample was counted as failed for it.")
        return EXIT_NOT_FINISHED
    for (stage, shard), error in report.errors.items():
        err.print(f"[red]{stage}/shard {shard} gave up:[/red] {escape(error)}")
    unplaced = sorted({stage for stage, _ in report.blocked} & set(report.unplaceable))
    for stage in unplaced:
        err.print(f"[red]{stage} could not be placed:[/red] {escape(report.unplaceable[stage])}")
    if report.blocked:
        why = " or ".join(([f"a stage could not be placed ({', '.join(unplaced)})"] if unplaced else [])
                          + (["an upstream shard gave up"] if report.errors else []))
        err.print(f"[red]{len(report.blocked)} shards could not run because {why or 'of the above'}.[/red]")
        err.print(f"Fix the cause, then run `ffp run {run_dir}` again: finished work is kept.")
    if not report.ok:
        return EXIT_NOT_FINISHED
    return EXIT_SAMPLES_FAILED if _print_failed(run_dir, statuses or [], plan) else EXIT_OK


def _print_failed(run_dir: str, statuses: list[StageStatus], plan: RunPlan | None = None) -> bool:
    """One line for the samples that failed or were quarantined, per stage, with the commands that list and retry
    them (``plan``: to tell the permanent failures, which only ``--permanent`` retries); False when there are none."""
    failed = {s.stage: s.failed for s in statuses if s.failed}
    quarantined = {s.stage: s.quarantined for s in statuses if s.quarantined}
    if not failed and not quarantined:
        return False
    permanent = sum(permanent_failures(plan, stage) for stage in failed) if plan is not None else 0
    parts = [f"{sum(found.values())} {what} ({', '.join(f'{stage} {n}' for stage, n in found.items())})"
             for what, found in (("failed", failed), ("quarantined", quarantined)) if found]
    hints = [f"list them: ffp query {run_dir} \"select stage, sample_id, status, reason from manifests where status "
             "in ('failed', 'quarantined')\""]
    if sum(failed.values()) > permanent or quarantined:
        hints.append(f"retry them: ffp retry {run_dir}" + (" --quarantined" if quarantined else ""))
    if permanent:
        hints.append(f"{permanent} failed for good (an empty file, not a video, ...): fix the inputs in place, then "
                     f"ffp retry {run_dir} --permanent")
    err.print(f"[yellow]samples: {', '.join(parts)}[/yellow]; {'; '.join(hints)}")
    return True


@app.command()
def demo(
    folder: Annotated[str, typer.Option("--dir", "-d", metavar="DIR", help="the demo's folder or URL (s3://...): "
                                        "its inputs/ and its run/")] = "ffp-demo",
    sequences: Annotated[int, typer.Option(help="synthetic sequences to generate")] = 8,
    fresh: Annotated[bool, typer.Option("--fresh", help="delete an earlier demo folder first")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate synthetic VOS clips and still images and run the three demo tracks (synthetic pairs; swap/removal
    and style pairs on tiny random-weight models), then verify and report. Runs on a local Ray, or on the
    cluster of RAY_ADDRESS / `ray job submit`; on a multi-node cluster give --dir a URL every node can read."""
    started = time.time()
    out = folder.rstrip("/")
    if fresh:
        Storage(out).remove("", recursive=True)
    inputs = _demo_inputs(out, sequences)
    overrides = [f"inputs.0.path={inputs}", f"inputs.1.path={inputs}/content", f"inputs.2.path={inputs}/styles"]
    cfg = load_config(preset="demo", overrides=overrides, run_dir=f"{out}/run")
    report, plan = _execute(cfg, verbose=verbose)
    statuses = _print_status(cfg.run_dir, plan=plan)
    checked = verify_run(Storage(cfg.run_dir))
    console.print(f"verify: {checked.shards} shards, {checked.samples} rows, "
                  + ("[green]clean[/green]" if checked.ok else f"[red]{len(checked.problems)} problems[/red]"))
    for problem in checked.problems:
        err.print(f"  {escape(problem)}")
    _demo_report(cfg.run_dir)
    folders = [node.output_dir for node in plan.graph.with_role("export")]
    console.print("pairs: " + ", ".join(f"[cyan]{cfg.run_dir}/{folder}[/cyan]" for folder in folders)
                  + f" (WebDataset shards, dataset.parquet, README.md); demo took {time.time() - started:.1f} s")
    raise typer.Exit(_exit_code(report, cfg.run_dir, statuses, plan) or (EXIT_OK if checked.ok else EXIT_NOT_FINISHED))


DEMO_INPUTS_READY = "inputs-ready"


def _demo_inputs(out: str, sequences: int) -> str:
    """``OUT/inputs``, made once: generated in place for a local folder; for a URL generated in a temporary
    folder and uploaded, with a marker written last so that an interrupted upload is redone, not half used."""
    from media.demo_media import make_demo_images, make_demo_vos

    def generate(root: Path) -> None:
        if not (root / "JPEGImages").exists():
            console.print(f"generating {sequences} synthetic sequences in {root}")
            make_demo_vos(root, num_sequences=sequences, num_frames=88)  # 81-frame clips at 16 fps, as FFP-300K
        if not (root / "styles").exists():
            make_demo_images(root)

    folder = Storage(out)
    if folder.is_local:
        generate(Path(out) / "inputs")
    elif not folder.exists(DEMO_INPUTS_READY):
        with tempfile.TemporaryDirectory(prefix="ffp-demo-") as staging:
            generate(Path(staging))
            console.print(f"uploading the demo inputs to {out}/inputs")
            folder.remove("inputs", recursive=True)
            folder.upload(staging, "inputs")
        folder.write_bytes(DEMO_INPUTS_READY, b"")
    return f"{out}/inputs"


def _demo_report(run_dir: str) -> None:
    from app.report import ReportError, build_report

    try:
        with _report_bars() as progress:
            built = build_report(run_dir, progress=_report_progress(progress))
    except ReportError as exc:
        err.print(f"[yellow]no report:[/yellow] {escape(str(exc))}")
        return
    console.print(f"report: [cyan]{built.index}[/cyan] (open it in a browser; label pairs with `ffp review {run_dir}`)")


# Looking at a run --------------------------------------------------------------------------------------


@app.command()
def plan(
    config: ConfigArg = None, preset: PresetOpt = None, out: OutOpt = None, set_: SetOpt = None, as_json: JsonOpt = False,
    estimate_clips: Annotated[Optional[int], typer.Option("--estimate", min=1, help="project GPU-hours and wall time for N clips")] = None,
    gpus: Annotated[Optional[float], typer.Option(help="--estimate: GPUs of the cluster (default: ray.num_gpus)")] = None,
    cpus: Annotated[Optional[float], typer.Option(help="--estimate: CPUs of the cluster (default: ray.num_cpus)")] = None,
    calibration: Annotated[Optional[str], typer.Option(help="--estimate: `ffp calibrate` output (default: scheduler.calibration)")] = None,
    gpu: GpuOpt = None, mfu: MfuOpt = DEFAULT_MFU,
) -> None:
    """Stages, resources, shard counts, fingerprints, and what is done / stale / to do. Writes nothing.
    With --estimate N: GPU-hours and wall time per stage for N clips on a cluster shape, from the models' FLOPs
    (`ffp models check`) and, where given, a calibration measured on real hardware."""
    if estimate_clips is not None:
        cfg, card = _config_for_gpu(config, preset, out, set_, gpu)
        _print_estimate(cfg, estimate_clips, gpus, cpus, calibration, card, mfu, as_json=as_json)
        return
    cfg = _resolve_config(config, preset, out, set_)
    storage, graph, run_plan = open_run(cfg)
    rows = []
    for node in graph.nodes.values():
        counts = {state.value: n for state, n in run_plan.state_counts(node.name).items()}
        rows.append({**graph.describe()[graph.order.index(node.name)], "shards": sum(counts.values()), **counts})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"plan for {cfg.run_dir}")
    for column in ("stage", "type", "after", "fingerprint", "cpus", "gpus", "actors", "shards", "done", "stale", "todo", "waiting"):
        table.add_column(column)
    for row in rows:
        res = row["resources"]
        table.add_row(row["stage"], row["type"], ",".join(row["after"]) or "-", row["fingerprint"], str(res["cpus"]),
                      str(res["gpus"]), str(res["actors"]), str(row["shards"]), str(row["done"]),
                      _warn(row["stale"]), str(row["todo"] + row["retry"]), str(row["waiting"]))
    console.print(table)
    stale = [row["stage"] for row in rows if row["stale"]]
    if stale:
        again = " ".join(["ffp run", *([config] if config else ["--preset", preset or ""]), *(["--out", out] if out else []),
                          *(f"--set {item}" for item in set_ or []), "--rerun-stale"])
        console.print(f"[yellow]stale: {', '.join(stale)}[/yellow] (committed with other params); "
                      f"`{escape(again)}` redoes them and what follows.")


def _print_estimate(cfg: PipelineConfig, clips: int, gpus: float | None, cpus: float | None, calibration: str | None,
                    card: Any, mfu: float, *, as_json: bool) -> None:
    from models.realsize.check import CheckError, check_config, samples_per_clip
    from pipeline.allocation import CostModel, items_per_clip, read_calibration_document, seconds_per_sample
    from pipeline.estimate import estimate, physics

    graph = build_graph(cfg)
    path = calibration or cfg.scheduler.calibration
    document: object = None
    if path is not None:
        try:
            document = read_calibration_document(path)
            seconds_per_sample(document, path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"calibration {path}: {exc}") from None
    try:
        with _check_progress(as_json) as progress:
            checks = list(check_config(graph, progress=progress))
    except CheckError as exc:
        raise ConfigError(f"{exc} (the estimate's physics prior needs every model stage checked)") from None
    prior = physics(graph, checks, card, mfu)
    fanout = samples_per_clip(graph)
    calibrated = seconds_per_sample(document, path) if document is not None else {}
    if not prior and not calibrated:
        raise ConfigError("--estimate needs a calibration for a config without GPU model stages (--calibration FILE "
                          "from `ffp calibrate RUN`, or scheduler.calibration in the config)")
    costs = CostModel(calibrated={**{s: p.seconds_at_mfu for s, p in prior.items()}, **calibrated})
    per_clip = {**fanout, **(items_per_clip(document) if document is not None else {})}
    capacity = _capacity(cfg, gpus, cpus)
    rows, hours = estimate(graph, costs, clips, capacity, items_per_clip=per_clip)
    unknown = [s for s in graph.order if s not in calibrated and s not in prior
               and s not in costs.calibrated and cfg.stages[s].type not in calibrated]
    source = {s: "calibrated" if (s in calibrated or cfg.stages[s].type in calibrated) else
              ("physics" if s in prior else "default 1 s") for s in graph.order}
    if as_json:
        print(json.dumps({
            "clips": clips, "capacity": capacity, "calibration": path, "gpu": card.name, "mfu": mfu,
            "wall_hours": hours, "gpu_hours": sum(r.gpu_hours for r in rows),
            "stages": [{**row.__dict__, "source": source[row.stage], "samples_per_clip": per_clip.get(row.stage, 1.0),
                        **({"tflops_per_sample": prior[row.stage].tflops_per_sample,
                            "physics_seconds_at_peak": prior[row.stage].seconds_at_peak,
                            "physics_seconds_at_mfu": prior[row.stage].seconds_at_mfu} if row.stage in prior else {})}
                       for row in rows], "unestimated": unknown}, indent=1))
        return
    table = Table(title=f"{clips:,} clips on {capacity['GPU']:g} x {card.name}, {capacity['CPU']:g} CPUs: physics at "
                        f"{mfu:.0%} MFU" + (f", calibration {path}" if path else ""))
    for column in ("stage", "TFLOP", "/clip", "s peak", f"s {mfu:.0%}", "s used", "actors", "GPU-hours", "hours"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    short = {"calibrated": "cal", "physics": "phys", "default 1 s": "dflt"}
    for row in rows:
        p = prior.get(row.stage)
        table.add_row(row.stage, f"{p.tflops_per_sample:,.0f}" if p else "-", f"{per_clip.get(row.stage, 1.0):g}",
                      f"{p.seconds_at_peak:,.1f}" if p else "-", f"{p.seconds_at_mfu:,.1f}" if p else "-",
                      f"{row.seconds_per_sample:,.3g} {short[source[row.stage]]}",
                      f"{row.actors}x{row.gpus_per_actor:g}" if row.gpus_per_actor else str(row.actors),
                      f"{row.gpu_hours:,.0f}", f"{row.hours:,.1f}")
    console.print(table)
    console.print(f"wall time: about {hours:,.1f} h ({hours / 24:,.1f} days); GPU-hours: "
                  f"{sum(r.gpu_hours for r in rows):,.0f}")
    console.print(f"TFLOP per sample and seconds per sample on an actor's GPUs at their bf16 peak (s peak) and at "
                  f"{mfu:.0%} of it come from `ffp models check`; s used is what the estimate takes (cal: calibration, "
                  f"phys: physics, dflt: 1 s assumed); actors: per stage at the start, x GPUs each.")
    capped = [row for row in rows if row.gpus_per_actor and row.actors >= cfg.stages[row.stage].resources.actors
              and row.hours >= 0.5 * hours and capacity["GPU"] > sum(r.actors * r.gpus_per_actor for r in rows)]
    for row in capped:
        console.print(f"[yellow]{row.stage} is capped at {row.actors} actors (resources.actors) with GPUs to "
                      f"spare:[/yellow] --set stages.{row.stage}.resources.actors=N lets it use more of the cluster")
    cpu_only = [s for s in graph.order if source[s] == "default 1 s"]
    if cpu_only:
        console.print(f"[yellow]no physics or calibration for {', '.join(cpu_only)} (CPU work: 1 s a sample "
                      "assumed)[/yellow]; `ffp calibrate` a short run to include them.")


def _capacity(cfg: PipelineConfig, gpus: float | None, cpus: float | None) -> dict[str, float]:
    """The cluster an estimate sizes pools for: ``--gpus``/``--cpus``, else the config's local Ray, else this machine;
    ``--gpus`` alone assumes :data:`CPUS_PER_GPU` CPUs per GPU (a GPU node's usual ratio)."""
    gpu_count = gpus if gpus is not None else cfg.ray.num_gpus or 0.0
    if cpus is None and gpus is not None:
        cpus = CPUS_PER_GPU * gpus
        err.print(f"assuming {CPUS_PER_GPU} CPUs per GPU ({cpus:g}); --cpus sets them")
    return {"GPU": gpu_count, "CPU": cpus if cpus is not None else cfg.ray.num_cpus or float(os.cpu_count() or 1)}


CPUS_PER_GPU = 8


def _warn(n: int) -> str:
    return f"[yellow]{n}[/yellow]" if n else "0"


@app.command()
def calibrate(
    run_dir: RunArg,
    out: Annotated[Optional[str], typer.Option("--write", "-w", metavar="FILE", help="write it to FILE (YAML; .json for "
                                               "JSON) instead of printing it")] = None,
) -> None:
    """Seconds per sample per stage measured on this hardware, from a run's manifests: the calibration that
    `ffp plan --estimate` and the scheduler (scheduler.calibration) read."""
    from pipeline.estimate import calibration_document

    storage, graph, _ = open_run(load_run_config(run_dir))
    document = calibration_document(storage, graph)
    if not document["seconds_per_sample"]:
        raise ConfigError(f"{run_dir} has no committed shards to measure")
    text = _calibration_text(document, out or "")
    if out:
        Path(out).write_text(text)
        console.print(f"calibration of {len(document['seconds_per_sample'])} stages written to {escape(out)}")
    else:
        print(text)


def _calibration_text(document: dict[str, Any], path: str) -> str:
    """A calibration document as ``path`` wants it: JSON for ``.json``, else YAML."""
    return json.dumps(document, indent=1) if path.endswith(".json") else yaml.safe_dump(document, sort_keys=False)


WATCH_S = 10.0
WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="redraw the table with the rates since the last look, "
                                        "until every shard is committed or Ctrl-C")]
EveryOpt = Annotated[float, typer.Option("--every", metavar="SECONDS", min=0.1,
                                         help="with --watch: seconds between looks")]


@app.command()
def status(run_dir: RunArg, as_json: JsonOpt = False, watch: WatchOpt = False, every: EveryOpt = WATCH_S) -> None:
    """Per stage: shards done/total, samples ok/filtered/failed/quarantined, throughput, ETA. With --watch, again
    and again (`ffp status RUN --watch --every 30`), from the run folder alone: any machine that can read it."""
    if watch and as_json:
        raise typer.BadParameter("--watch draws a table; --json prints the status once", param_hint="--json")
    if watch:
        sys.exit(_watch_status(run_dir, every))
    plan = open_run(load_run_config(run_dir)).plan
    statuses = _print_status(run_dir, as_json=as_json, plan=plan)
    if not as_json:
        _print_failed(run_dir, statuses, plan)
        _print_driver(Storage(run_dir))
        logs = Storage(run_dir).walk_files(actor_logs_dir())
        if logs:
            console.print(f"what the actors printed: {escape(run_dir)}/{actor_logs_dir()}/ ({len(logs)} files, one per actor)")


def _print_driver(run: Storage) -> None:
    """Who runs the run now (its lease), and the storage retries its last run needed."""
    holder = read_lease(run)
    if holder is not None:
        state = "[red]gone quiet: a rerun takes it over[/red]" if holder.free() else "[green]running[/green]"
        console.print(f"driver: {escape(holder.describe())}: {state}")
    retried = last_run_retries(run)
    if retried:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(retried.items()))
        console.print(f"storage errors retried in the last run: {sum(retried.values())} ({kinds})")


def _print_status(run_dir: str, *, as_json: bool = False, plan: RunPlan | None = None) -> list[StageStatus]:
    """``plan``: the run as the command that just ran it holds it (not opened again). ``as_json``: the run's state,
    its driver, every stage's counts and the ids of its failed and quarantined samples (``app.status.run_status``)."""
    run_plan = plan if plan is not None else open_run(load_run_config(run_dir)).plan
    if as_json:
        document = run_status(run_plan, Storage(run_dir))
        print(json.dumps(document, indent=1, default=_json_value))
        return [StageStatus(**stage) for stage in document["stages"]]
    statuses = stage_statuses(run_plan)
    console.print(_status_table(run_dir, statuses))
    return statuses


def _status_table(run_dir: str, statuses: list[StageStatus], frame: WatchFrame | None = None) -> Table:
    """The status table; in a watch (``frame``) with each stage's samples and shards per second since the last look."""
    table = Table(title=f"status of {run_dir}")
    columns = status_table_columns(statuses)
    recent = ["now samples/s", "now shards/s"] if frame is not None else []
    columns = [*columns[:-1], *recent, columns[-1]]  # the rates since the last look before the ETA
    for column in columns:
        table.add_column(column, justify="right" if column != "stage" else "left")
    for s in statuses:
        cells = status_cells(s)
        cells["failed"], cells["quarantined"] = _warn(s.failed), _warn(s.quarantined)
        if frame is not None:
            since = frame.rates.get(s.stage) if frame.rates else None
            cells |= dict(zip(recent, [f"{since.samples_per_s:.2f}", f"{since.shards_per_s:.3f}"] if since else ["-", "-"]))
        table.add_row(*(cells[column] for column in columns))
    return table


def _watch_status(run_dir: str, every: float) -> int:
    """``status --watch``: the table redrawn every ``every`` seconds until every shard is committed (0), a run ends
    with shards not done (1: its log is named), or Ctrl-C (0)."""
    opened = open_run(load_run_config(run_dir))
    watch = StatusWatch(opened.storage, opened.graph, plan=opened.plan)

    def view(frame: WatchFrame, last: bool = False) -> Group:
        note = f"looked at {time.strftime('%H:%M:%S')}" + ("" if last else f", again every {every:g} s (Ctrl-C to stop)")
        return Group(_status_table(run_dir, frame.statuses, frame), Text(note, style="dim"))

    frame = watch.frame()
    with Live(view(frame), console=console, auto_refresh=False) as live:  # not a terminal: only the last view
        try:
            while not frame.complete and not frame.ended:
                time.sleep(every)
                frame = watch.frame()
                live.update(view(frame), refresh=True)
        except KeyboardInterrupt:
            pass
        live.update(view(frame, last=True))
    if not console.is_terminal:
        console.line()  # Live ends a terminal's last line only
    _print_failed(run_dir, frame.statuses)
    if frame.complete:
        console.print("complete: every shard of every stage is committed")
    elif frame.ended:
        console.print(f"the run ended with shards not done: see {escape(opened.storage.path(frame.ended[-1]))}")
        return 1
    return 0


@app.command()
def verify(
    run_dir: RunArg,
    as_json: JsonOpt = False,
    repair: Annotated[bool, typer.Option("--repair", help="remove each damaged shard and the shards made from it "
                                         "(manifests, then tars), and orphan temporaries; `ffp run RUN` then makes "
                                         "them again. Takes the run's lease")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="with --repair: print what it would remove, remove "
                                          "nothing")] = False,
) -> None:
    """Check every tar against its manifest (sha256, size, keys, layout); list orphans and leftovers."""
    from pipeline.repair import RepairResult, repair_run

    if dry_run and not repair:
        raise typer.BadParameter("--dry-run goes with --repair")
    run = _run_folder(run_dir)
    result: RepairResult | None = None
    if repair:
        result = repair_run(run, build_graph(load_run_config(run_dir)), dry_run=dry_run)
        report = result.report
    else:
        report = verify_run(run)
    if as_json:
        data: dict[str, Any] = {
            "ok": report.ok, "problems": report.problems, "warnings": report.warnings, "shards": report.shards,
            "rows": report.samples, "findings": [finding.to_json() for finding in report.findings],
        }
        if result is not None:
            data["repair"] = {
                "dry_run": result.dry_run, "complete": result.complete, "error": result.error,
                "plan": [{"path": r.path, "why": r.why} for r in result.plan.removals],
                "removed": [{"path": r.path, "why": r.why} for r in result.removed],
                "regenerate": [[stage, shard] for stage, shard in result.plan.regenerate],
                "unrepaired": [{"finding": f.to_json(), "why": why} for f, why in result.plan.unrepaired],
            }
        print(json.dumps(data, indent=1))
    else:
        for problem in report.problems:
            console.print(f"[red]problem[/red] {escape(problem)}", soft_wrap=True)
        for warning in report.warnings:
            console.print(f"[yellow]warning[/yellow] {escape(warning)}", soft_wrap=True)
        verdict = "[green]clean[/green]" if report.ok else f"[red]{len(report.problems)} problems[/red]"
        console.print(f"{report.shards} shards, {report.samples} rows: {verdict}")
        if result is None and not report.ok:
            console.print(f"`ffp verify {escape(run_dir)} --repair` removes what is damaged and what was made from it "
                          "(`--dry-run` shows it first); `ffp run` then makes it again", soft_wrap=True)
        if result is not None and not report.ok:
            plan, verb = result.plan, "would remove" if dry_run else "removed"
            console.print(f"repair: {escape(plan.summary())}", soft_wrap=True)
            for removal in plan.removals if dry_run else result.removed:
                console.print(f"{verb} {escape(removal.path)} ({escape(removal.why)})", soft_wrap=True)
            for finding, why in plan.unrepaired:
                console.print(f"[red]not repaired[/red] {escape(finding.message)}: {escape(why)}", soft_wrap=True)
            if result.error:
                console.print(f"[red]repair stopped:[/red] {escape(result.error)}; run `ffp verify {escape(run_dir)} "
                              "--repair` again", soft_wrap=True)
            if plan.regenerate and result.error is None:
                console.print(f"{'then run' if dry_run else 'run'} `ffp run {escape(run_dir)}` to regenerate "
                              f"{len(plan.regenerate)} shards", soft_wrap=True)
    if result is not None and not dry_run:
        raise typer.Exit(0 if result.complete else 1)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def inspect(
    run_dir: RunArg,
    sample: Annotated[str, typer.Argument(metavar="SAMPLE", help="a sample id, a unique prefix of one, or a source "
                                          "(its id, its URI, or its file or folder name)")],
    dump: Annotated[Optional[Path], typer.Option("--dump", metavar="DIR", help="write each stage's row to DIR/<stage>.json "
                                                 "and its files into DIR/<stage>/")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the rows as a JSON list (times in ISO 8601), nothing "
                                          "else")] = False,
) -> None:
    """A sample across stages, back to the clip it derives from: its manifest rows and its files."""
    from manifests.query import connect

    run = _run_folder(run_dir)
    con = connect(run)
    sample_id = _find_sample(con, run_dir, sample)
    rows, wanted, seen = [], [sample_id], set()
    while wanted:  # `<clip>-swap` also shows the rows of `<clip>` in the stages before the fan-out
        seen.update(wanted)
        found = con.sql("select * from manifests where list_contains(?, sample_id)", params=[wanted]).to_arrow_table()
        rows += (found := found.to_pylist())
        wanted = sorted({r["input_id"] for r in found if r["input_id"] and r["input_id"] not in seen})
    cfg = load_run_config(run_dir)
    _, graph, _ = open_run(cfg)
    rows.sort(key=lambda r: (graph.order.index(r["stage"]) if r["stage"] in graph.nodes else len(graph.nodes), r["sample_id"]))
    if as_json:
        print(json.dumps([{k: v for k, v in row.items() if v is not None} for row in rows], indent=1,
                         default=_json_value, ensure_ascii=False))
    say = (lambda *_, **__: None) if as_json else console.print  # --json: the JSON alone on stdout
    written = 0
    for row in rows:
        values = {k: v for k, v in row.items() if v is not None}
        text = json.dumps(values, indent=1, default=_json_value, ensure_ascii=False)
        if not as_json:
            console.rule(f"{row['stage']}: {row['status']} ({row['sample_id']})")
        say(text, markup=False, highlight=False)
        log = actor_log(row["stage"], row["worker"]) if row.get("worker") else None
        if log is not None and run.exists(log):
            say(f"  what its actor printed: {escape(run.path(log))}")
        target = dump / row["stage"] if dump is not None else None
        if target is not None:
            dump.mkdir(parents=True, exist_ok=True)
            target.with_name(f"{row['stage']}.json").write_text(text + "\n")
            written += 1
        node = graph.nodes.get(row["stage"])
        if node is None or row["status"] != Status.OK or (as_json and dump is None):
            continue
        reader = open_shard(run, node.tar_path(row["shard"]))
        key = row["sample_id"]
        for field in reader.fields(key) if key in reader.keys else []:
            data = reader.read(key, field)
            say(f"  {key}.{field}: {len(data)} bytes")
            if target is not None:
                target.mkdir(exist_ok=True)
                (target / field).write_bytes(data)
                written += 1
        reader.close()
    if dump is not None:
        (err if as_json else console).print(f"wrote {written} files under {escape(str(dump))}: each stage's row as "
                                            "<stage>.json, its files in <stage>/")


def _json_value(value: Any) -> Any:
    """What ``json.dumps`` cannot write itself: times as ISO 8601, bytes as their size."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


INSPECT_CANDIDATES = 10


def _find_sample(con: Any, run_dir: str, text: str) -> str:
    """The sample ``text`` names: its id, else the one sample whose id starts with it, else the clip of a source
    named by its id, URI or file name. Several: the shortest when every other derives from it (``<clip>-swap``),
    else a refusal that lists them."""
    exact = con.sql("select 1 from manifests where sample_id = ? limit 1", params=[text]).fetchall()
    if exact:
        return text
    by_source = ("source_id = $1 or source_uri = $1 or ends_with(source_uri, '/' || $1) or "
                 "regexp_extract(source_uri, '([^/]+?)(\\.[^./]*)?$', 1) = $1")
    columns = {row[0] for row in con.sql("describe manifests").fetchall()}
    where = "starts_with(sample_id, $1)" + (f" or {by_source}" if {"source_id", "source_uri"} <= columns else "")
    found = sorted(r[0] for r in con.sql(f"select distinct sample_id from manifests where {where}", params=[text]).fetchall())
    if not found:
        err.print(f"[red]error:[/red] no sample, sample id prefix or source {escape(repr(text))} in {escape(run_dir)}; "
                  f"list some with: ffp query {run_dir} \"select sample_id, source_uri from ingest limit 10\"")
        raise typer.Exit(EXIT_NOT_FINISHED)
    shortest = min(found, key=len)
    if all(sid.startswith(shortest) for sid in found):
        if len(found) > 1:
            err.print(f"{escape(text)}: {shortest}; made from it: {', '.join(s for s in found if s != shortest)} "
                          "(inspect one of those by its id)")
        return shortest
    err.print(f"[red]error:[/red] {escape(repr(text))} names {len(found)} samples; give one of them (or a longer prefix):")
    for sid in found[:INSPECT_CANDIDATES]:
        err.print(f"  {sid}")
    if len(found) > INSPECT_CANDIDATES:
        err.print(f"  ... and {len(found) - INSPECT_CANDIDATES} more")
    raise typer.Exit(EXIT_USAGE)


QUERY_FORMATS = ("table", "csv", "jsonl", "json", "parquet")


@app.command("query")
def query_cmd(
    run_dir: RunArg,
    sql: Annotated[str, typer.Argument(metavar="SQL", help="SQL over the views `manifests` and one per stage")],
    output: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT", help="table (a terminal; tab-separated "
                                        "lines when piped), csv, jsonl, json or parquet; lists and structs as JSON "
                                        "text in CSV, times as ISO 8601")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
    csv: Annotated[bool, typer.Option("--csv", help="the same as --format csv")] = False,
    limit: Annotated[int, typer.Option(help="rows to print in the table view")] = 50,
) -> None:
    """DuckDB SQL over every manifest of the run."""
    import duckdb

    from manifests.query import query
    from manifests.tabular import plain_rows, write_table

    fmt = "json" if as_json else "csv" if csv else output
    if fmt not in QUERY_FORMATS:
        raise typer.BadParameter(f"{fmt!r}: one of {', '.join(QUERY_FORMATS)}", param_hint="--format")
    try:
        result = query(_run_folder(run_dir), sql)
    except duckdb.Error as exc:
        err.print(f"[red]query failed:[/red] {escape(str(exc))}")
        err.print("views: `manifests` (all stages) and one per stage; columns: "
                  f"ffp query {run_dir} \"describe manifests\"")
        raise typer.Exit(EXIT_USAGE) from None
    if fmt != "table":
        binary = getattr(sys.stdout, "buffer", None)
        if binary is not None:
            write_table(result, fmt, binary)
            binary.flush()
        else:  # a text stream (stdout redirected within Python): the text formats only
            if fmt == "parquet":
                raise typer.BadParameter("parquet needs a byte stream: redirect stdout to a file", param_hint="--format")
            buffer = io.BytesIO()
            write_table(result, fmt, buffer)
            sys.stdout.write(buffer.getvalue().decode())
    elif not console.is_terminal:  # a pipe or a log: every cell whole, one line per row
        for cells in plain_rows(result.slice(0, limit)):  # the column names first
            print("\t".join(cells))
        if result.num_rows > limit:
            print(f"# {result.num_rows} rows, {limit} shown (--limit N, or --format csv for all)")
    else:
        table = Table(caption=f"{result.num_rows} rows" + (f", {limit} shown (--limit N)" if result.num_rows > limit else ""))
        for name in result.column_names:
            table.add_column(name, overflow="fold")
        for cells in plain_rows(result.slice(0, limit))[1:]:
            table.add_row(*(Text(cell) for cell in cells))  # no markup from data
        console.print(table)


ReportOutOpt = Annotated[Optional[str], typer.Option("--report-dir", metavar="DIR", help="the report's folder "
                                                     "(default RUN/report)")]
MaxMediaOpt = Annotated[int, typer.Option("--max-media", help="pairs per judge stage whose clips are copied")]


def _report_progress(progress: Progress) -> Any:
    def start(description: str, total: int) -> Any:
        task = progress.add_task(description, total=total)
        return lambda n: progress.advance(task, n)

    return start


def _report_bars() -> Progress:
    return Progress(TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@app.command()
def report(run_dir: RunArg, out: ReportOutOpt = None, max_media: MaxMediaOpt = 200) -> None:
    """Write an HTML report of the judged pairs (run summary, scores, reasons, pairs with their clips) and of
    ingest's gates on raw video; open its index.html in a browser, no server needed."""
    from app.report import ReportError, build_report

    try:
        with _report_bars() as progress:
            result = build_report(run_dir, out, max_media=max_media, progress=_report_progress(progress))
    except ReportError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    for warning in result.warnings:
        err.print(f"[yellow]warning[/yellow] {escape(warning)}")
    gates = f", the gates of {', '.join(result.gates)}" if result.gates else ""
    console.print(f"report: {result.pairs} pairs ({result.media} with media){gates} in {result.seconds:.1f} s: "
                  f"[cyan]{result.index}[/cyan]")


@app.command()
def review(
    run_dir: RunArg,
    port: Annotated[int, typer.Option(help="port (0: any free one)")] = 0,
    host: Annotated[str, typer.Option(help="address to listen on (loopback unless --allow-remote)")] = "127.0.0.1",
    reviewer: Annotated[Optional[str], typer.Option(help="name saved with each decision (default: your login)")] = None,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="listen on a non-loopback address")] = False,
    out: ReportOutOpt = None,
    max_media: MaxMediaOpt = 200,
) -> None:
    """Serve the report with accept / reject buttons; decisions become labels that export honours on the next
    `ffp run`. Ctrl-C stops it."""
    from app.report import ReportError
    from app.review import ReviewError, ReviewServer

    try:
        with _report_bars() as progress:
            server = ReviewServer(run_dir, out=out, host=host, port=port, reviewer=reviewer, allow_remote=allow_remote,
                                  max_media=max_media, progress=_report_progress(progress))
    except (ReportError, ReviewError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(f"reviewing {server.report.pairs} pairs of {run_dir}: open [cyan]{server.url}[/cyan] "
                  "(Ctrl-C stops; then `ffp run` the run again to export with the labels)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.close()


# Models --------------------------------------------------------------------------------------------------


@models_app.command("check")
def models_check(
    config: ConfigArg = None,
    preset: Annotated[Optional[list[str]], typer.Option(
        "--preset", "-p", help="a config shipped with ffp (repeatable)")] = None,
    out: OutOpt = None, set_: SetOpt = None, gpu: GpuOpt = None, mfu: MfuOpt = DEFAULT_MFU, as_json: JsonOpt = False,
    stage: Annotated[Optional[list[str]], typer.Option("--stage", help="only this stage (repeatable)")] = None,
    write_calibration: Annotated[Optional[str], typer.Option(
        "--write-calibration", help="write the physics prior as a calibration file (scheduler.calibration)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="run every stage again, even if checked before")] = False,
) -> None:
    """Build every model stage at its real size on the meta device (no weights, no GPU) and run one clip at the
    config's size through its own code: parameters, weight and activation memory, FLOPs per clip, and whether it
    fits the GPU. Exits 1 if a stage breaks or does not fit, 2 on a config it cannot check."""
    if write_calibration and len(preset or []) > 1:
        raise ConfigError("--write-calibration needs one config")
    rows, refused = [], False
    for name in preset or [None]:  # type: ignore[list-item]
        cfg, card = _config_for_gpu(config, name, out, set_, gpu)
        found, failed = _check_models(cfg, card, mfu, stage, write_calibration, not no_cache, as_json)
        rows += found
        refused = refused or failed
    if as_json:
        print(json.dumps(rows, indent=1, default=str))
    raise typer.Exit(1 if refused else 0)


def _check_models(cfg: PipelineConfig, card: Any, mfu: float, stages: list[str] | None, write_calibration: str | None,
                  use_cache: bool, as_json: bool) -> tuple[list[dict[str, Any]], bool]:
    """One config's check: its JSON rows, and whether a stage does not fit (errors printed)."""
    from models.realsize.check import CheckError, check_config
    from models.realsize.fit import fits
    from pipeline.estimate import physics, physics_calibration
    from pipeline.gpu_sharing import Sharing
    from pipeline.gpus import GIB

    graph = build_graph(cfg)
    unknown = sorted(set(stages or []) - set(graph.nodes))
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; stages: {', '.join(graph.order)}")
    reports = []
    try:
        with _check_progress(as_json) as progress:
            reports = list(check_config(graph, stages=stages, use_cache=use_cache, progress=progress))
    except CheckError as exc:
        err.print(f"[red]error:[/red] {cfg.name}: {escape(str(exc))}")
        raise typer.Exit(1 if "breaks at real size" in str(exc) else 2) from None
    sharing = Sharing.of(graph.config)
    fitted = {r.stage: fits(r, graph.nodes[r.stage], card, sharing) for r in reports}
    costs = physics(graph, reports, card, mfu)
    if write_calibration:
        document = physics_calibration(costs, card, mfu, cfg.name)
        Path(write_calibration).write_text(_calibration_text(document, write_calibration))
    rows = [{**r.to_json(), "config": cfg.name, "gpu": card.name, "fits": fitted[r.stage][0].fits,
             "fit_options": [f.__dict__ for f in fitted[r.stage]], "mfu": mfu,
             "seconds_at_peak": costs[r.stage].seconds_at_peak if r.stage in costs else None,
             "seconds_at_mfu": costs[r.stage].seconds_at_mfu if r.stage in costs else None} for r in reports]
    if not as_json:
        _print_checks(cfg, reports, fitted, costs, card, mfu, GIB)
        if write_calibration:
            console.print(f"physics prior written to {escape(write_calibration)} (use it as scheduler.calibration)")
    too_big = [(r.stage, fitted[r.stage]) for r in reports if not fitted[r.stage][0].fits]
    for name, options in too_big:
        fit, others = options[0], [f.option for f in options[1:] if f.fits]
        hint = (f"; it fits with {' or '.join(others)}" if others else
                "; give it a larger share (resources.gpus), more tensor-parallel GPUs or a smaller model")
        err.print(f"[red]error:[/red] {cfg.name}: stage {name!r} does not fit {card.label} ({card.memory_gib:g} GiB): "
                  f"it needs {fit.needed_gib:.1f} GiB where its share is {fit.limit_gib:.1f} GiB ({escape(fit.note)})"
                  f"{hint}")
    return rows, bool(too_big)


def _config_for_gpu(config: str | None, preset: str | None, out: str | None, sets: list[str] | None,
                    gpu: str | None) -> tuple[PipelineConfig, Any]:
    """The config with ``gpu`` set (its gpu_plans entry applied) and that GPU type; without ``gpu`` the config's own
    type, else the default."""
    from pipeline.gpus import DEFAULT_GPU
    from pipeline.gpus import gpu as gpu_type

    if gpu is not None:
        try:
            gpu_type(gpu)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if config and Storage(config).exists(RUN_YAML):
            cfg = load_run_config(config)
            cfg = override_config(cfg, [f"gpu={gpu}"], source=f"{config}/{RUN_YAML}")
        else:
            cfg = _resolve_config(config, preset, out, [*(sets or []), f"gpu={gpu}"])
    else:
        cfg = _resolve_config(config, preset, out, sets)
    return cfg, gpu_type(cfg.gpu or DEFAULT_GPU)


def _check_progress(quiet: bool) -> Any:
    """A context manager giving ``check_config``'s progress callback: a spinner per stage on stderr."""
    from contextlib import contextmanager

    @contextmanager
    def manager() -> Any:
        status = err.status("checking models at real size")
        if not quiet:
            status.start()

        def progress(name: str, report: Any) -> None:
            if report is None:
                status.update(f"checking stage {name} at real size (meta device, no weights)")
            elif not quiet:
                took = f"{report.seconds:.1f} s" if report.seconds else "cached"
                err.print(f"  checked {name} ({took})")

        try:
            yield progress
        finally:
            status.stop()

    return manager()


def _print_checks(cfg: PipelineConfig, reports: list[Any], fitted: dict[str, Any], costs: dict[str, Any], card: Any,
                  mfu: float, gib: int) -> None:
    table = Table(title=f"{cfg.name} at real size on {card.name} ({card.memory_gib:g} GiB, {card.bf16_tflops:g} "
                        "TFLOP/s bf16), per sample")
    for column in ("stage", "params", "weights", "activ.", "TFLOP", "/clip", "GPU-s peak", f"GPU-s {mfu:.0%}",
                   "fits GiB"):
        table.add_column(column, justify="left" if column in ("stage", "fits GiB") else "right")
    for r in reports:
        fit = fitted[r.stage][0]
        cost = costs.get(r.stage)
        verdict = ("[green]yes[/green]" if fit.fits else "[red]no[/red]") + f" {fit.needed_gib:.0f}/{fit.limit_gib:.0f}"
        table.add_row(r.stage, f"{r.params / 1e9:.2f}B", f"{r.weight_bytes / gib:.1f}",
                      f"{r.activation_bytes / gib:.1f}",
                      f"{r.flops_per_sample / 1e12:,.0f}", f"{r.samples_per_clip:g}",
                      f"{cost.seconds_at_peak * cost.gpus_per_actor:,.1f}" if cost else "-",
                      f"{cost.seconds_at_mfu * cost.gpus_per_actor:,.1f}" if cost else "-", verdict)
    console.print(table)
    for r in reports:
        lines = [f"models: {', '.join(r.models)} ({r.dtype})"]
        if r.tflops_per_forward is not None:
            lines.append(f"{r.tflops_per_forward:,.0f} TFLOP per transformer forward x {r.forwards_per_step} per step "
                         f"x {r.steps} steps; activation peak in {r.peak_in}")
        if r.prefill_tflops is not None:
            lines.append(f"prefill {r.prefill_tokens} tokens {r.prefill_tflops:,.1f} TFLOP, decode "
                         f"{r.decode_tflops_per_token:.3f} TFLOP/token x {r.new_tokens}")
        lines += [f"memory: {f.option}: {f.needed_gib:.1f} of {f.limit_gib:.1f} GiB"
                  f"{'' if f.fits else ' (does not fit)'}: {f.note}" for f in fitted[r.stage]]
        lines += [f"not checked: {note}" for note in r.not_checked]
        if r.value_reads:
            lines.append("read values inside a model (the stand-in was used): " + ", ".join(sorted(r.value_reads)))
        lines.append(f"the stage's own code returned: {r.result}")
        console.print(f"[bold]{r.stage}[/bold]")
        for line in lines:
            console.print(f"  {escape(line)}")


# Config ------------------------------------------------------------------------------------------------


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the config (stage params schemas under $stageParams)."""
    print(json.dumps(json_schema(), indent=1))


@config_app.command("presets")
def config_presets() -> None:
    """List the presets shipped with ffp."""
    for name in preset_names():
        console.print(name)


@config_app.command("show")
def config_show(config: ConfigArg = None, preset: PresetOpt = None, out: OutOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config, every default filled in (what run.yaml will hold)."""
    print(config_to_yaml(_resolve_config(config, preset, out, set_)), end="")
