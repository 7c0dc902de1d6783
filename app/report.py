"""``ffp report RUN``: a static HTML report of a run's judged pairs, opened from disk (file://) or served by
``ffp review`` (``app.review``).

What it reads (nothing is written to the run except the report folder):

* the run summary and per-stage throughput (``app.status.stage_statuses``);
* every row of every judge stage (stages with the ``judge`` role, ``Stage.roles``): status, verdict, ``reject_checks``,
  ``reject_reasons``, ``judge_thresholds`` (JSON bounds per check) and every ``score_*`` column, found generically;
* the rows of the export stages (the ``export`` role) after each judge (exported, or left out and why), and the
  current review labels;
* per pair, the values of the pair columns the stages before the judge declare (``Stage.pair_columns``), so a new
  stage's column shows without the report knowing it;
* per judge shard, the judge's input samples (``pipeline.worker.open_upstream``): instruction and captions of every
  pair, and the media of the pairs chosen for media (``max_media`` per judge stage, chosen deterministically: one
  pair of each (outcome, task) group in turn, rejected groups first; see ``choose_media``);
* the gates of every stage that has some (ingest's quality and motion gates on raw video), found generically: a
  declared column ``X`` with a declared threshold column ``X_min`` and/or ``X_max`` (``gate_columns``). Each gate's
  values over the stage's rows, ok against filtered, binned with its thresholds, and the filter reasons counted.
  A run with gates and no judge (``curate-videos``) gets a report of its gates alone.

What it writes, through ``Storage`` (any fsspec URL), into ``RUN/report/`` by default:

* ``index.html``, ``app.js``, ``style.css`` (``app/report_assets``: plain files, no build step, no network);
* ``data.js``: ``window.FFP_REPORT``, one compact column-wise record of every pair plus the summary, histograms
  (binned here, over every pair) and the reject-reasons table; a file rather than JSON to fetch, so the page works
  from file://;
* ``pairs/chunk-NNNNNN.js``: the details of ``CHUNK`` pairs each (scores, reasons, text), loaded when a pair opens;
* ``media/<stage>/<pair>.{src.mp4,edit.mp4,thumb.jpg,mask.png}``: the clips as they are (no re-encode), a
  src|edit first-frame thumbnail and the mask as a strip of small RGBA frames for the overlay.

Text from the run (captions, reasons, notes) is data: the page only ever sets it with ``textContent``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.status import stage_statuses
from manifests.labels import Label, current_labels
from manifests.query import connect, stage_names
from manifests.storage import Storage
from media.arrays import read_npz
from media.sources import InputListError
from media.video_io import first_frame
from pipeline.config import ConfigError
from pipeline.graph import GraphError, StageGraph, StageNode, build_graph
from pipeline.plan import RunPlan
from pipeline.run import RUN_YAML, load_run_config

ASSETS_DIR = Path(__file__).with_name("report_assets")
ASSETS = ("index.html", "app.js", "style.css")
DEFAULT_MAX_MEDIA = 200
"""Pairs per judge stage whose media is copied: enough to look at, never a copy of a 300K-pair dataset."""
CHUNK = 200
"""Pairs per details file: the page loads one small file when a pair opens."""
HIST_BINS = 24
GATE_CLIP_ROWS = 100
"""From this many values on, a gate histogram spans the 1st-99th percentile (and its thresholds): one extreme clip
(a sharpness of 20,000 among hundreds) would otherwise squash every other value into a bin or two."""
GATE_REASONS = 30
THUMB_HEIGHT = 96
MASK_WIDTH = 160
MASK_MAX_FRAMES = 256
MASK_INSIDE = (0, 255, 120, 70)
"""Overlay colours (RGBA): the edit region lightly tinted, the rest dimmed, visible on any footage."""
MASK_OUTSIDE = (0, 0, 0, 150)
TEXT_LIMIT = 4000
"""Characters kept of any text from the run (captions, reasons, notes), so one odd row cannot bloat the page."""
TEXT_COLUMNS = ("instruction", "caption_src", "caption_edit", "target")
STATE_ACCEPTED, STATE_REJECTED, STATE_FAILED = 0, 1, 2
EXPORT_NONE, EXPORT_OK, EXPORT_LEFT_OUT = 0, 1, 2
SAFE_NAME = re.compile(r"[a-z0-9_-]{1,100}")

Advance = Callable[[int], None]
ProgressFn = Callable[[str, int], Advance]
"""``progress(description, total)`` returns ``advance(n)``; the CLI passes rich progress bars."""


class ReportError(Exception):
    """The report cannot be made (not a run folder, no judge stage, ...); the message says what to do."""


@dataclass
class ReportResult:
    out: str
    """URL of the report folder."""
    index: str
    """``index.html`` as a path (local folders) or URL."""
    pairs: int
    media: int
    files: list[str]
    """Every file written, relative to the report folder (what ``ffp review`` may serve)."""
    pair_shards: dict[tuple[str, str], int]
    """(judge stage, sample_id) -> shard of every pair in the report."""
    pair_index: dict[tuple[str, str], int]
    """(judge stage, sample_id) -> the pair's index in the page's data."""
    seconds: float
    warnings: list[str] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)
    """The stages whose gates the report shows."""


def _no_progress(description: str, total: int) -> Advance:
    return lambda n: None


def default_out(run_dir: str) -> str:
    return run_dir.rstrip("/") + "/report"


def build_report(
    run_dir: str, out: str | None = None, *, max_media: int = DEFAULT_MAX_MEDIA, progress: ProgressFn | None = None,
) -> ReportResult:
    """Write the report of ``run_dir`` into ``out`` (default ``RUN/report``) and say what was written."""
    started = time.perf_counter()
    if max_media < 0:
        raise ReportError(f"--max-media must be >= 0, got {max_media}")
    run = Storage(run_dir)
    if not run.exists(RUN_YAML):
        raise ReportError(f"{run_dir} is not a run folder (no {RUN_YAML}); start one with `ffp run CONFIG`")
    try:
        # the folder as given, even when run.yaml names where it was made (a copied or moved run)
        cfg = load_run_config(run_dir)
        graph = build_graph(cfg)
        judges = graph.with_role("judge")
        gated = [node for node in graph.nodes.values() if gate_columns(node.columns)]
        present = set(stage_names(run))
        if not judges and not any(node.name in present for node in gated):
            raise ReportError(_no_judge(run_dir, graph))
        plan = RunPlan(run, graph)  # the graph built above: the run is opened once
    except (ConfigError, GraphError, InputListError) as exc:
        raise ReportError(f"{run_dir}: {exc}") from None
    target = Storage(out or default_out(run_dir))
    collector = _Collector(run, graph, target, max_media, progress or _no_progress)
    gates = collector.gates([node for node in gated if node.name in present])
    if not judges and not gates:  # gate columns declared, but no row has a value: the gates were off
        raise ReportError(_no_judge(run_dir, graph))
    data = collector.collect(judges)
    data["gates"] = gates
    data["run"] = {
        "url": run_dir, "name": cfg.name, "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stages": [{**s.as_dict(), "type": graph.nodes[s.stage].type} for s in stage_statuses(plan)],
        "max_media": max_media,
    }
    collector.finish(data)
    index = target.path("index.html") if target.is_local else target.url.rstrip("/") + "/index.html"
    return ReportResult(
        out=target.url, index=index, pairs=len(collector.pairs), media=len(collector.media),
        files=sorted(collector.files),
        pair_shards={(p.stage, p.sample_id): p.shard for p in collector.pairs},
        pair_index={(p.stage, p.sample_id): i for i, p in enumerate(collector.pairs)},
        seconds=time.perf_counter() - started, warnings=collector.warnings, gates=[g["stage"] for g in gates],
    )


def _no_judge(run_dir: str, graph: StageGraph) -> str:
    stages = ", ".join(f"{n.name} ({n.type})" for n in graph.nodes.values())
    return (f"{run_dir} has no judge stage and no gate values (stages: {stages}); the report shows judged pairs "
            "and the gates of raw-video ingest: add a judge stage to the tracks, or turn ingest's gates on (see the "
            "presets)")


# Collecting ----------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    """What the report keeps of one judge row (scores stay in the judge's arrays, at ``row``)."""

    stage: str
    row: int
    sample_id: str
    shard: int
    task: str
    state: int
    status: str
    reason: str | None
    checks: list[str]
    reasons: list[str]
    thresholds: int
    seconds: float | None
    text: dict[str, str] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    """The pair columns declared before the judge (``StageNode.pair_columns``) that are not text and have a value."""
    label: Label | None = None
    export: int = EXPORT_NONE
    """In the dataset export (the first after the judge that keeps accepted pairs): written, left out, or no row."""
    exports: list[dict[str, Any]] = field(default_factory=list)
    """Every export's row: {stage, written, reason}."""
    media: int = -1
    media_note: str | None = None


class _Collector:
    """Reads a run judge by judge and writes the report's files as it goes (media and pair details are never all
    held in memory at once)."""

    def __init__(self, run: Storage, graph: StageGraph, target: Storage, max_media: int, progress: ProgressFn) -> None:
        self.run, self.graph, self.target, self.max_media, self.progress = run, graph, target, max_media, progress
        self.pairs: list[_Pair] = []
        self.media: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.warnings: list[str] = []
        self.threshold_sets: list[dict[str, Any]] = []
        self._threshold_index: dict[str, int] = {}
        self._scores: dict[str, dict[str, np.ndarray]] = {}
        self._pending: list[dict[str, Any]] = []
        self._con: Any = None

    @property
    def con(self) -> Any:
        if self._con is None:
            self._con = connect(self.run)
        return self._con

    def _write(self, rel: str, data: bytes) -> None:
        self.target.write_bytes(rel, data)
        self.files.append(rel)

    def collect(self, judges: list[StageNode]) -> dict[str, Any]:
        if self.target.exists("data.js"):  # an earlier report of ours: drop what this one may no longer have
            for folder in ("media", "pairs"):
                self.target.remove(folder, recursive=True)
        con = self.con
        present = set(stage_names(self.run))
        labels = current_labels(self.run)
        summaries = []
        for node in judges:
            table = con.sql(f'select * from "{node.name}" order by shard, sample_id').to_arrow_table() \
                if node.name in present else None
            start = len(self.pairs)
            pairs = self._pairs(node.name, table) if table is not None else []
            for pair in pairs:
                pair.label = labels.get((node.name, pair.sample_id))
            exports = self._exports(con, node, present, {p.sample_id: p for p in pairs})
            chosen = choose_media(pairs, self.max_media)
            self.pairs += pairs
            self._upstream(node, pairs, chosen, start)
            summaries.append(self._summary(node, pairs, table, exports, len(chosen), start))
            self._flush_details(pairs)
        self._flush_details([], final=True)
        return {
            "version": 1,
            "judges": summaries,
            "stage_names": [n.name for n in judges],
            "tasks": sorted({p.task for p in self.pairs}),
            "checks": sorted({c for p in self.pairs for c in p.checks}),
            "thresholds": self.threshold_sets,
            "pairs": self._columns([n.name for n in judges]),
            "labels": {str(i): label_json(p.label) for i, p in enumerate(self.pairs) if p.label is not None},
            "media": self.media,
            "chunk": CHUNK,
            "warnings": self.warnings[:50],
        }

    def gates(self, nodes: list[StageNode]) -> list[dict[str, Any]]:
        """Per stage with gate values: row counts by status, a histogram per gate (``gate_histogram``) and the
        filter reasons (the text before the first colon) with their counts."""
        out = []
        for node in nodes:
            available = set(self.con.sql(f"select * from {_quoted(node.name)} limit 0").columns)
            gates = {value: {kind: column for kind, column in bounds.items() if column in available}
                     for value, bounds in gate_columns(node.columns).items() if value in available}
            columns = ["status", "reason", *gates, *(c for bounds in gates.values() for c in bounds.values())]
            if not gates or not {"status", "reason"} <= available:
                continue  # manifests from before the gates existed
            select = f'select {", ".join(map(_quoted, columns))} from {_quoted(node.name)}'
            table = self.con.sql(select).to_arrow_table()
            status = [str(s) for s in table["status"].to_pylist()]
            state = np.array([GATE_STATES.get(s, STATE_FAILED) for s in status], np.int8)
            histograms = []
            for value, bounds in gates.items():
                values = _floats(table[value])
                if np.isnan(values).all():
                    continue
                thresholds = {kind: _floats(table[column]) for kind, column in bounds.items()}
                histograms.append({"column": value, **gate_histogram(values, state, thresholds),
                                   "threshold_columns": bounds})
            if not histograms:
                continue
            reasons = Counter(_text(str(r).split(":", 1)[0], 200)
                              for s, r in zip(status, table["reason"].to_pylist()) if s == "filtered" and r)
            counts = Counter(status)
            out.append({
                "stage": node.name, "type": node.type,
                "counts": {"rows": len(status), "ok": counts["ok"], "filtered": counts["filtered"],
                           "failed": len(status) - counts["ok"] - counts["filtered"]},
                "histograms": histograms,
                "reasons": [{"reason": r, "count": n} for r, n in reasons.most_common(GATE_REASONS)],
            })
        return out

    def finish(self, data: dict[str, Any]) -> None:
        for name in ASSETS:
            self._write(name, (ASSETS_DIR / name).read_bytes())
        self._write("data.js", _js_assign("window.FFP_REPORT", data))

    def _pairs(self, stage: str, table: Any) -> list[_Pair]:
        self._scores[stage] = {
            name: _floats(table[name]) for name in table.column_names if name.startswith("score_")
        }
        wanted = [c for c in ("sample_id", "shard", "status", "reason", "verdict", "task", "reject_checks",
                              "reject_reasons", "judge_thresholds", "seconds") if c in table.column_names]
        pairs = []
        for i, row in enumerate(table.select(wanted).to_pylist()):
            status, verdict = row.get("status"), row.get("verdict")
            ok = status == "ok"
            state = STATE_ACCEPTED if ok and verdict == "accept" else STATE_REJECTED if ok and verdict == "reject" \
                else STATE_FAILED
            pairs.append(_Pair(
                stage=stage, row=i, sample_id=str(row["sample_id"]), shard=int(row.get("shard") or 0),
                task=_text(row.get("task") or "?", 200), state=state, status=str(status),
                reason=_optional(row.get("reason")),
                checks=[_text(c, 200) for c in row.get("reject_checks") or [] if c],
                reasons=[_text(r) for r in (row.get("reject_reasons") or [])[:50]],
                thresholds=self._thresholds_of(row.get("judge_thresholds")), seconds=_number(row.get("seconds")),
            ))
        return pairs

    def _exports(self, con: Any, judge: StageNode, present: set[str], by_id: dict[str, _Pair]) -> list[dict[str, Any]]:
        """The export stages that follow ``judge``, with how many pairs each wrote and left out; each pair gets every
        export's row, and its ``export`` state from the first export that keeps accepted pairs (the dataset)."""
        out: list[dict[str, Any]] = []
        for node in self.graph.nodes.values():
            if not node.has_role("export") or judge.name not in node.ancestors:
                continue
            if next((a for a in node.ancestors if self.graph.nodes[a].has_role("judge")), None) != judge.name:
                continue  # a later judge is nearer: that one's pairs are what this export writes
            select = node.cls.pair_selection(node.params)
            primary = select != "rejected" and not any(e["primary"] for e in out)
            entry = {"stage": node.name, "select": select, "folder": node.output_dir, "primary": primary,
                     "written": 0, "left_out": 0}
            out.append(entry)
            if node.name not in present:
                continue
            for row in con.sql(f'select sample_id, status, reason from "{node.name}"').to_arrow_table().to_pylist():
                pair = by_id.get(row["sample_id"])
                if pair is None:
                    continue
                written = row["status"] == "ok"
                entry["written" if written else "left_out"] += 1
                pair.exports.append({"stage": node.name, "written": written,
                                     "reason": None if written else _text(row["reason"])})
                if primary:
                    pair.export = EXPORT_OK if written else EXPORT_LEFT_OUT
        return out

    def _upstream(self, node: StageNode, pairs: list[_Pair], chosen: set[str], start: int) -> None:
        """Text of every pair and media of the chosen ones, shard by shard from the judge's inputs."""
        from pipeline.worker import open_upstream

        by_shard: dict[int, dict[str, int]] = {}
        for i, pair in enumerate(pairs):
            by_shard.setdefault(pair.shard, {})[pair.sample_id] = i
        media = node.cls.pair_media_for(node.params)
        fields = {name: media.get(name) for name in ("src", "edit", "edit0", "mask")}
        shown = [c for c in node.pair_columns if c not in TEXT_COLUMNS and c not in node.columns]
        advance = self.progress(f"{node.name}: pairs", len(pairs))
        for shard, wanted in by_shard.items():
            try:
                with open_upstream(self.run, self.graph, node.name, shard) as samples:
                    for sample in samples:
                        i = wanted.get(sample.sample_id)
                        if i is None:
                            continue
                        pairs[i].text = {k: _text(sample.columns[k]) for k in TEXT_COLUMNS if sample.columns.get(k)}
                        pairs[i].columns = {k: _plain(sample.columns[k]) for k in shown
                                            if sample.columns.get(k) is not None}
                        if pairs[i].sample_id in chosen:
                            self._add_media(pairs[i], start + i, sample, fields)
            except Exception as exc:  # a shard whose inputs are gone still has its scores in the report
                self.warnings.append(f"{node.name}/shard {shard}: cannot read its inputs ({type(exc).__name__}: {exc})")
            for i in wanted.values():
                if pairs[i].sample_id in chosen and pairs[i].media < 0 and pairs[i].media_note is None:
                    pairs[i].media_note = "the judge's inputs are not readable"
            advance(len(wanted))

    def _add_media(self, pair: _Pair, index: int, sample: Any, fields: Mapping[str, str | None]) -> None:
        """Copy a pair's clips (as they are), its thumbnail and its mask strip into ``media/``."""
        if not (fields["src"] and fields["edit"]):
            return
        base = f"media/{_safe(pair.stage)}/{_safe(pair.sample_id)}"
        try:
            src, edit = sample.read(fields["src"]), sample.read(fields["edit"])
            first, fps, frames = first_frame(src)
            edit0 = _read_image(sample.read(fields["edit0"])) if fields["edit0"] else first_frame(edit)[0]
            files = {f"{base}.src.mp4": src, f"{base}.edit.mp4": edit, f"{base}.thumb.jpg": thumbnail(first, edit0)}
            entry: dict[str, Any] = {
                "pair": index, "src": f"{base}.src.mp4", "edit": f"{base}.edit.mp4", "thumb": f"{base}.thumb.jpg",
                "fps": _number(sample.columns.get("fps")) or fps, "frames": frames,
                "width": int(first.shape[1]), "height": int(first.shape[0]),
            }
            masks = read_npz(sample.read(fields["mask"])).get("masks") if fields["mask"] else None
            if masks is not None and masks.ndim == 3 and masks.size:
                files[f"{base}.mask.png"], count = mask_strip(masks)
                entry.update(mask=f"{base}.mask.png", mask_frames=count, mask_total=int(masks.shape[0]))
        except Exception as exc:  # one unreadable pair must not stop the report
            pair.media_note = f"media unreadable ({type(exc).__name__}: {_text(str(exc), 200)})"
            return
        for rel, data in files.items():
            self._write(rel, data)
        pair.media = len(self.media)
        self.media.append(entry)

    def _summary(self, node: StageNode, pairs: list[_Pair], table: Any, exports: list[dict[str, Any]], chosen: int,
                 start: int) -> dict[str, Any]:
        values = self._scores.get(node.name, {})
        scores = [c for c in sorted(values) if not np.isnan(values[c]).all()]
        by_task: dict[str, Counter[int]] = {}
        for pair in pairs:
            if pair.thresholds >= 0:
                by_task.setdefault(pair.task, Counter())[pair.thresholds] += 1
        task_thresholds = {task: counts.most_common(1)[0][0] for task, counts in by_task.items()}
        counts = {"pairs": len(pairs), "accepted": 0, "rejected": 0, "failed": 0, "labelled": 0,
                  "media": sum(p.media >= 0 for p in pairs), "media_chosen": chosen}
        for pair in pairs:
            counts[("accepted", "rejected", "failed")[pair.state]] += 1
            counts["labelled"] += pair.label is not None
        return {
            "stage": node.name,
            "exports": exports,
            "counts": counts,
            "scores": scores,
            "not_computed": [c for c in sorted(values) if c not in scores],
            "task_thresholds": task_thresholds,
            "histograms": histograms({c: values[c] for c in scores}, [p.task for p in pairs],
                                     np.array([p.state for p in pairs], np.int8), self.threshold_sets, task_thresholds),
            "reasons": reasons_table(pairs, start),
        }

    def _thresholds_of(self, raw: Any) -> int:
        """Index of a ``judge_thresholds`` JSON value in the report's threshold sets (-1 when absent or bad)."""
        if not raw:
            return -1
        key = str(raw)
        if key not in self._threshold_index:
            try:
                parsed = json.loads(key)
                bounds = {str(check): {k: float(v) for k, v in b.items() if k in ("min", "max") and _finite(v)}
                          for check, b in parsed.items() if isinstance(b, dict)}
            except (ValueError, TypeError, AttributeError):
                self.warnings.append(f"judge_thresholds is not a JSON object of bounds: {_text(key, 120)!r}")
                bounds = None
            self._threshold_index[key] = len(self.threshold_sets) if bounds is not None else -1
            if bounds is not None:
                self.threshold_sets.append(bounds)
        return self._threshold_index[key]

    def _columns(self, stages: list[str]) -> dict[str, list[Any]]:
        """Every pair, column by column (what the grid, the filters and the counts need), small even for 300K pairs."""
        tasks = {t: i for i, t in enumerate(sorted({p.task for p in self.pairs}))}
        checks = {c: i for i, c in enumerate(sorted({c for p in self.pairs for c in p.checks}))}
        stage_index = {name: i for i, name in enumerate(stages)}
        return {
            "id": [p.sample_id for p in self.pairs],
            "stage": [stage_index[p.stage] for p in self.pairs],
            "shard": [p.shard for p in self.pairs],
            "task": [tasks[p.task] for p in self.pairs],
            "state": [p.state for p in self.pairs],
            "checks": [[checks[c] for c in p.checks] for p in self.pairs],
            "media": [p.media for p in self.pairs],
            "export": [p.export for p in self.pairs],
        }

    def _details(self, pair: _Pair) -> dict[str, Any]:
        scores: dict[str, float | str] = {}
        for column, values in self._scores[pair.stage].items():
            value = float(values[pair.row])
            if math.isnan(value):
                continue
            scores[column[len("score_"):]] = _number(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
        return {
            "status": pair.status, "reason": pair.reason, "reasons": pair.reasons, "scores": scores,
            "thresholds": pair.thresholds, "text": pair.text, "columns": pair.columns, "exports": pair.exports,
            "media_note": pair.media_note,
            "seconds": pair.seconds,
        }

    def _flush_details(self, pairs: list[_Pair], *, final: bool = False) -> None:
        """Append the pairs' details and write every full chunk (the last, partial one when ``final``)."""
        for pair in pairs:
            self._pending.append(self._details(pair))
            pair.text, pair.reasons, pair.columns = {}, [], {}  # written; the report does not need them again
        done = len(self.pairs) - len(self._pending)  # pairs already in chunk files
        while len(self._pending) >= CHUNK or (final and self._pending):
            index = done // CHUNK
            part, self._pending = self._pending[:CHUNK], self._pending[CHUNK:]
            self._write(f"pairs/chunk-{index:06d}.js",
                        f"window.FFP_CHUNK({index}, JSON.parse({json.dumps(_json(part))}));\n".encode())
            done += len(part)


def label_json(label: Label) -> dict[str, Any]:
    """A label as the page shows it (the text bounded)."""
    return {"decision": str(label.decision), "reviewer": _text(label.reviewer, 200), "note": _text(label.note),
            "at": label.at.isoformat(timespec="seconds") if isinstance(label.at, datetime) else str(label.at)}


# Choosing media, histograms, reasons ------------------------------------------------------------------------


def choose_media(pairs: list[_Pair], limit: int) -> set[str]:
    """Up to ``limit`` pairs for media, the same for the same rows: each (outcome, task) group in an order fixed by
    a hash of the sample id, one pair of each group in turn, rejected groups first, then failed, then accepted; so
    with a small limit the rejected pairs of every task are there, and with a large one every group has its share."""
    groups: dict[tuple[int, str], list[str]] = {}
    priority = {STATE_REJECTED: 0, STATE_FAILED: 1, STATE_ACCEPTED: 2}
    for pair in pairs:
        groups.setdefault((priority[pair.state], pair.task), []).append(pair.sample_id)
    queues = [sorted(ids, key=lambda s: hashlib.sha256(s.encode()).hexdigest()) for _, ids in sorted(groups.items())]
    chosen: list[str] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        chosen += [q[depth] for q in queues if depth < len(q)][: limit - len(chosen)]
        depth += 1
    return set(chosen)


def histograms(values: Mapping[str, np.ndarray], tasks_of: list[str], state: np.ndarray,
               threshold_sets: list[dict[str, Any]], task_thresholds: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per score column: common bins over every pair (widened to show the thresholds), counts per task split by
    outcome (``a`` accepted, ``r`` rejected, ``o`` other), and per task the count of infinite values."""
    tasks = sorted(set(tasks_of))
    task_of = np.array([tasks.index(t) for t in tasks_of], dtype=np.int32) if tasks_of else np.zeros(0, np.int32)
    out = []
    for column, scores in values.items():
        finite = np.isfinite(scores)
        check = column[len("score_"):]
        bounds = [v for t in task_thresholds.values() for v in threshold_sets[t].get(check, {}).values()]
        lo, hi, bin_of = _bins(scores, finite, np.concatenate([scores[finite], np.array(bounds, dtype=np.float64)]))
        counts: dict[str, dict[str, list[int]]] = {}
        infinite: dict[str, int] = {}
        for t, task in enumerate(tasks):
            in_task = finite & (task_of == t)
            counts[task] = {key: np.bincount(bin_of[in_task & (state == code)], minlength=HIST_BINS).tolist()
                            for key, code in (("a", STATE_ACCEPTED), ("r", STATE_REJECTED), ("o", STATE_FAILED))}
            if n := int((np.isinf(scores) & (task_of == t)).sum()):
                infinite[task] = n
        out.append({"column": column, "check": check, "lo": lo, "hi": hi, "bins": HIST_BINS, "counts": counts,
                    "infinite": infinite, "missing": int(np.isnan(scores).sum())})
    return out


GATE_STATES = {"ok": STATE_ACCEPTED, "filtered": STATE_REJECTED}
"""A gated stage's row status as the histograms colour it: ok, filtered, anything else (failed)."""


def gate_columns(columns: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The gates among a stage's declared columns: ``{X: {"min": "X_min", "max": "X_max"}}`` for every numeric
    column ``X`` declared with a numeric ``X_min`` and/or ``X_max`` (the threshold each row was measured against)."""
    import pyarrow as pa

    def numeric(name: str) -> bool:
        kind = columns.get(name)
        return isinstance(kind, pa.DataType) and (pa.types.is_floating(kind) or pa.types.is_integer(kind))

    out: dict[str, dict[str, str]] = {}
    for name in columns:
        bounds = {kind: f"{name}_{kind}" for kind in ("min", "max") if numeric(f"{name}_{kind}")}
        if bounds and numeric(name):
            out[name] = bounds
    return out


def gate_histogram(values: np.ndarray, state: np.ndarray, thresholds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """One gate over a stage's rows: common bins (widened to show every distinct threshold), counts split by row
    status (``a`` ok, ``r`` filtered, ``o`` other), and the distinct thresholds the rows were measured against. From
    ``GATE_CLIP_ROWS`` values on the bins span the 1st-99th percentile; values beyond fall in the end bins and are
    counted in ``below`` / ``above``."""
    finite = np.isfinite(values)
    lines = [{"kind": kind, "value": float(v)} for kind, column in thresholds.items()
             for v in np.unique(column[np.isfinite(column)])]
    shown = values[finite]
    if shown.size >= GATE_CLIP_ROWS:
        shown = np.percentile(shown, [1, 99])
    lo, hi, bin_of = _bins(values, finite, np.concatenate([shown, np.array([v["value"] for v in lines], np.float64)]))
    counts = {key: np.bincount(bin_of[finite & (state == code)], minlength=HIST_BINS).tolist()
              for key, code in (("a", STATE_ACCEPTED), ("r", STATE_REJECTED), ("o", STATE_FAILED))}
    return {"lo": lo, "hi": hi, "bins": HIST_BINS, "counts": counts, "thresholds": lines,
            "below": int((values[finite] < lo).sum()), "above": int((values[finite] > hi).sum()),
            "missing": int((~finite).sum())}


def _bins(values: np.ndarray, finite: np.ndarray, known: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``HIST_BINS`` bins spanning ``known`` (the values to show and the thresholds), 2 % wider on each side, and the
    bin of each finite value (those outside fall in the end bins)."""
    lo, hi = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.02
    lo, hi = lo - pad, hi + pad
    bin_of = np.zeros(len(values), np.int64)
    bin_of[finite] = np.clip(np.floor((values[finite] - lo) / (hi - lo) * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
    return lo, hi, bin_of


def reasons_table(pairs: list[_Pair], offset: int, examples: int = 5) -> list[dict[str, Any]]:
    """Per failing check: how many pairs, per task, and a few example pairs (those with media first)."""
    table: dict[str, dict[str, Any]] = {}
    for i, pair in enumerate(pairs):
        for check in dict.fromkeys(pair.checks):
            entry = table.setdefault(check, {"check": check, "count": 0, "by_task": {}, "candidates": []})
            entry["count"] += 1
            entry["by_task"][pair.task] = entry["by_task"].get(pair.task, 0) + 1
            entry["candidates"].append((pair.media < 0, i + offset))
    out = []
    for entry in sorted(table.values(), key=lambda e: (-e["count"], e["check"])):
        picked = sorted(entry.pop("candidates"))[:examples]
        out.append({**entry, "examples": [index for _, index in picked]})
    return out


# Media helpers ---------------------------------------------------------------------------------------------


def _read_image(data: bytes) -> np.ndarray:
    from media.images import read_rgb

    return read_rgb(data, "edit0")


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def thumbnail(src: np.ndarray, edit: np.ndarray, height: int = THUMB_HEIGHT) -> bytes:
    """src | edit first frames side by side, ``height`` pixels tall, as JPEG."""
    gap = np.full((height, 2, 3), 255, np.uint8)
    image = np.concatenate([_fit_height(src, height), gap, _fit_height(edit, height)], axis=1)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def mask_strip(masks: np.ndarray, width: int = MASK_WIDTH, max_frames: int = MASK_MAX_FRAMES) -> tuple[bytes, int]:
    """The (T,H,W) mask as one RGBA PNG for the page's overlay: frames stacked top to bottom, ``width`` pixels wide,
    the edit region tinted and the rest dimmed; at most ``max_frames`` frames (evenly picked). Returns (png, frames)."""
    from media.png import png_bytes

    total, h, w = masks.shape
    picks = np.unique(np.linspace(0, total - 1, min(total, max_frames)).round().astype(int))
    height = max(1, round(h * width / w))
    strip = np.empty((len(picks) * height, width, 4), np.uint8)
    for row, t in enumerate(picks):
        small = cv2.resize((masks[t] > 0).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        strip[row * height : (row + 1) * height] = np.where(small[..., None] > 0, MASK_INSIDE, MASK_OUTSIDE)
    return png_bytes(strip), len(picks)


# Small value helpers -------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    """A file name for a stage or sample id: itself when it is already plain, else a readable part and a hash."""
    if SAFE_NAME.fullmatch(name):
        return name
    return re.sub(r"[^a-z0-9_-]", "_", name.lower())[:60] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def _text(value: Any, limit: int = TEXT_LIMIT) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    """A finite number rounded for the page (6 significant digits), else ``None``."""
    number = _float(value)
    return float(f"{number:.6g}") if math.isfinite(number) else None


def _plain(value: Any) -> Any:
    """A column value for the page: a bool or finite number as it is (rounded), anything else as bounded text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return _number(value)
    return _text(value, 200)


def _optional(value: Any) -> str | None:
    return None if value is None or value == "" else _text(value)


def _floats(column: Any) -> np.ndarray:
    """A score column as float64, null -> NaN; a column that is not numeric counts as empty."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return np.asarray(pc.fill_null(column.cast(pa.float64()), math.nan).to_numpy(), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.full(len(column), math.nan)


def _quoted(name: str) -> str:
    """A SQL identifier (a stage or column name) for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)


def _js_assign(name: str, data: Any) -> bytes:
    """``name = JSON.parse("...")``: the data as a JS string literal (json.dumps escapes every quote and non-ASCII
    character), which no text in the data can break out of; JSON.parse is also faster than a literal this big."""
    return f"{name} = JSON.parse({json.dumps(_json(data))});\n".encode()
