"""Benchmark: the driver's read side at scale (status, plan, resume planning, query, verify) over synthetic runs.

    python bench/bench_manifests.py [--samples 3000 30000 300000 3000000] [--shard-size 64] [--repeat 2]
                                    [--cache /tmp/ffp-bench-manifests] [--verify-max 30000] [--regenerate]
                                    [--commit-generator]

For each size a run folder is generated once and cached under ``--cache`` (by generator version, samples and
shard size): the ``local-tiny`` preset without its rubric stage, i.e. the 7 stages ingest -> plan -> ground ->
track -> inpaint -> judge -> export, with ``shard_size`` 64 and ``max_clips`` 2 as in production. ``samples``
counts ingest clips; ``plan`` fans each ok clip out to a swap and a removal pair as in the real track, and later
stages filter and fail some, so every stage holds about 0.9-2x ``samples`` rows. Sources are frozen in
``sources/ingest.parquet``; every (stage, shard) gets the files a commit writes, with the stage's own columns
filled with realistic values, statuses mixing ok/filtered/failed (and a few quarantined), the real fingerprints
and the inputs digests the plan expects (computed with ``RunPlan`` itself, so the plan sees every shard done).
Tars are tiny: at most two ok samples of one 64-byte member each (``verify`` then checks them like any other; the
tar bytes are not what is measured here).

The default generator (``_fast_shards``, version 5) writes those files in bulk: each manifest's rows built as
Arrow columns (values drawn from pools with numpy), sorted by sample_id, with the schema ``manifest_schema``
gives, widened to the run's (``with_run_schema``, as ``commit_shard`` does), the ``ffp`` footer of a ``CommitInfo``
computed from those rows and the tar, written with the same ``pq.write_table`` options as ``commit_shard``; the
tar goes through the real ``write_shard``. It skips the fsync a real commit does (the bytes are the same). At
300K samples it takes 131 s with 2 processes where committing row by row took 655 s; ``--commit-generator`` keeps
that old path (``_generate_shards``, through ``commit_shard``).
``tests/test_scale.py`` and ``tests/test_index_scale.py`` run on its output.

Each command runs as a fresh subprocess, as a user types it (``ffp status RUN``, ``ffp plan RUN``, ``ffp query
RUN SQL``, ``ffp verify RUN``, and resume planning: ``open_run`` + ``stale_stages`` + the driver's readiness
pass with nothing to run, in a ``python -c``); wall time, CPU time (user+sys) and peak RSS (``ru_maxrss`` from
``os.wait4``) of each. Every command runs ``--repeat`` times back to back; the first run and the best of the
rest are both printed. The first run builds the derived caches (``index/``: commit infos, source digests, the
per-stage copies of the rows ``ffp query`` reads) when they are absent, so delete ``RUN/index`` to time a cold
start; the OS page cache is warm in every run (dropping it needs root). Growth factors compare each size with
the previous one (x10 samples). Compare CPU seconds on a shared machine: wall time follows the load.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # pa.compute
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manifests.layout import ENDED_CLEAN, manifest_path  # noqa: E402
from manifests.manifest import (  # noqa: E402
    META_KEY,
    CommitInfo,
    Status,
    commit_shard,
    manifest_schema,
    with_run_schema,
)
from manifests.shards import write_shard  # noqa: E402
from manifests.storage import Storage  # noqa: E402
from media.sources import source_id_for  # noqa: E402
from pipeline.config import config_to_yaml, validate_config  # noqa: E402
from pipeline.graph import build_graph  # noqa: E402
from pipeline.plan import RunPlan, write_sources  # noqa: E402

PRESET = ROOT / "pipeline" / "presets" / "local-tiny.yaml"
FFP = [sys.executable, "-m", "pipeline"]
GENERATOR_VERSION = "5"  # bump when the synthetic layout changes, so cached runs are rebuilt (2: the bulk writer,
# 3: the permanent column and the judge's verdict counts, 4: the run's schema in every manifest, 5: the clean-end
# marker a finished run leaves)
MAX_CLIPS = 2
GOAL_CPU_S = 2.0  # issue 21: status, plan, resume planning and query at 3M samples x 7 stages

# probability of (filtered, failed) per stage; the rest is ok (export: by the judge's verdict)
MIX = {"ingest": (0.04, 0.02), "plan": (0.05, 0.03), "ground": (0.08, 0.02), "track": (0.08, 0.02),
       "inpaint": (0.0, 0.03), "judge": (0.0, 0.01), "export": (0.0, 0.0)}
WORDS = ("a red car drives along a wet street at dusk while people cross behind it and a dog runs past the "
         "shop window with bright signs").split()


# Generation ------------------------------------------------------------------------------------------------
def make_config(run_dir: str, shard_size: int) -> dict[str, Any]:
    data = yaml.safe_load(PRESET.read_text())
    data["tracks"] = {"local": [s for s in data["tracks"]["local"] if s != "rubric"]}
    data["stages"].pop("rubric")
    data["stages"]["ingest"]["params"]["max_clips"] = MAX_CLIPS
    data.update(name="bench-manifests", run_dir=run_dir, shard_size=shard_size,
                inputs=[{"kind": "videos", "path": "s3://bench-bucket/raw"}])
    return data


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _value(rng: random.Random, name: str, kind: pa.DataType, sid: str) -> Any:
    if name == "task":
        return "removal" if sid.endswith("-removal") else "swap"
    if name in ("plan_raw", "judge_thresholds", "lineage", "models"):
        return json.dumps({"text": _text(rng, 20, 60), "n": rng.randint(0, 9)})
    if pa.types.is_string(kind):
        return _text(rng, 3, 14)
    if pa.types.is_floating(kind):
        return round(rng.random() * 40, 3)
    if pa.types.is_integer(kind):
        return rng.randint(0, 2000)
    if pa.types.is_boolean(kind):
        return rng.random() < 0.5
    if pa.types.is_list(kind):
        inner = kind.value_type
        if pa.types.is_floating(inner):
            return [round(rng.random() * 160, 1) for _ in range(4)]
        return [] if rng.random() < 0.8 else ["psnr_outside"]
    return None


def _rows(stage: str, shard: int, inputs: list[tuple[str, str]], columns: dict[str, pa.DataType], fingerprint: str,
          rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, dict[str, bytes]]]:
    """Rows of one (stage, shard) for ``inputs`` = (input_id, sample_id) pairs, and its tiny tar members."""
    rows, files = [], {}
    p_filtered, p_failed = MIX[stage]
    for input_id, sid in inputs:
        draw = rng.random()
        status = Status.FILTERED if draw < p_filtered else Status.FAILED if draw < p_filtered + p_failed else Status.OK
        if stage == "inpaint" and rng.random() < 0.002:
            status = Status.QUARANTINED
        values = {name: _value(rng, name, kind, sid) for name, kind in columns.items()}
        if stage == "judge":
            values["verdict"] = "accept" if rng.random() < 0.8 else "reject"
        if status != Status.OK:
            values = {name: values[name] for name in list(values)[:3]}
        rows.append({
            "sample_id": sid, "input_id": input_id, "shard": shard, "stage": stage, "status": str(status),
            "reason": None if status == Status.OK else f"{status}: {_text(rng, 4, 10)}",
            "attempts": 1 if status != Status.QUARANTINED else 2, "fingerprint": fingerprint,
            "worker": f"node-{rng.randint(0, 31):02d}:{rng.randint(1000, 9999)}", "seconds": rng.random() * 20,
            "model_seconds": rng.random() * 15, "finished_at": 1.7e9 + rng.random() * 1e6, **values,
        })
        if status == Status.OK and len(files) < 2:
            files[sid] = {"meta.json": b"{" + b"0" * 62 + b"}"}
    return rows, files


def _generate_shards(run_dir: str, shards: Sequence[int]) -> int:
    """Commit every stage of ``shards`` (one process of the pool); returns the number of commits."""
    storage = Storage(run_dir)
    from pipeline.run import load_run_config

    graph = build_graph(load_run_config(run_dir))
    plan = RunPlan(storage, graph)
    commits = 0
    for shard in shards:
        ok_rows: dict[str, list[dict[str, Any]]] = {}
        for stage in graph.order:
            node = graph.nodes[stage]
            rng = random.Random(f"{stage}/{shard}")
            if node.cls.is_source:
                inputs = [(row["source_id"], f"{row['source_id']}-c{k}")
                          for row in plan.source_rows[stage].get(shard, []) for k in range(MAX_CLIPS)]
            elif stage == "plan":
                inputs = [(r["sample_id"], f"{r['sample_id']}-{task}") for r in ok_rows[node.deps[0]] for task in ("swap", "removal")]
            else:
                inputs = [(r["sample_id"], r["sample_id"]) for r in ok_rows[node.deps[0]]]
            rows, files = _rows(stage, shard, inputs, dict(node.cls.columns), node.fingerprint, rng)
            if stage == "export":  # export carries the judge's verdict on
                verdicts = {r["sample_id"]: r.get("verdict") for r in ok_rows["judge"]}
                for row in rows:
                    if row["status"] == Status.OK:
                        row["verdict"] = verdicts.get(row["sample_id"])
                    if verdicts.get(row["sample_id"]) == "reject" and row["status"] == Status.OK:
                        row["status"], row["reason"] = str(Status.FILTERED), "rejected by the judge"
                        files.pop(row["sample_id"], None)
            ok_rows[stage] = [r for r in rows if r["status"] == Status.OK]
            expected = plan.expected_inputs_digest(stage, shard)
            assert expected is not None, (stage, shard)
            info = commit_shard(
                storage, stage=stage, shard=shard, tar_path=node.tar_path(shard), samples=files, rows=rows,
                stage_columns=node.columns, schema=graph.manifest_schema, fingerprint=node.fingerprint,
                inputs_digest=expected,
                extra={"seconds": round(sum(r["seconds"] for r in rows), 3), "worker": "bench", "reused": 0},
            )
            plan.commits[(stage, shard)] = info
            commits += 1
    return commits


# The fast generator: the same files, written in bulk --------------------------------------------------------
class _PlainFiles:
    """What ``write_shard`` needs of a Storage, writing in place without the fsync a real commit does (the bytes
    are the same; a benchmark run folder need not survive a power loss)."""

    def __init__(self, root: str) -> None:
        self.root = root

    @contextlib.contextmanager
    def atomic_writer(self, rel: str, *, durable: bool = True) -> Any:
        with open(os.path.join(self.root, rel), "wb") as handle:
            yield handle


def _pools(rng: np.random.Generator) -> dict[str, pa.Array]:
    """Value pools the columns draw from (vectorised ``take``): texts and JSON blobs of the old generator's shape."""
    def text(low: int, high: int) -> str:
        return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(low, high + 1)))

    return {
        "text": pa.array([text(3, 14) for _ in range(997)]),
        "json": pa.array([json.dumps({"text": text(20, 60), "n": int(rng.integers(0, 10))}) for _ in range(499)]),
        "reason": pa.array([text(4, 10) for _ in range(101)]),
        "worker": pa.array([f"node-{i % 32:02d}:{1000 + i * 37 % 9000}" for i in range(256)]),
        "checks": pa.array([[] if i % 5 else ["psnr_outside"] for i in range(50)], pa.list_(pa.string())),
    }


def _column(name: str, kind: pa.DataType, n: int, rng: np.random.Generator, pools: dict[str, pa.Array],
            sids: list[str]) -> pa.Array:
    if name == "task":
        return pa.array(["removal" if sid.endswith("-removal") else "swap" for sid in sids], kind)
    if name in ("plan_raw", "judge_thresholds", "lineage", "models"):
        return pools["json"].take(pa.array(rng.integers(0, len(pools["json"]), n)))
    if pa.types.is_string(kind):
        return pools["text"].take(pa.array(rng.integers(0, len(pools["text"]), n)))
    if pa.types.is_floating(kind):
        return pa.array(np.round(rng.random(n) * 40, 3)).cast(kind)
    if pa.types.is_integer(kind):
        return pa.array(rng.integers(0, 2000, n)).cast(kind)
    if pa.types.is_boolean(kind):
        return pa.array(rng.random(n) < 0.5)
    if pa.types.is_list(kind) and pa.types.is_floating(kind.value_type):
        values = pa.array(np.round(rng.random(4 * n) * 160, 1)).cast(kind.value_type)
        return pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * n + 1, 4, dtype=np.int32)), values).cast(kind)
    if pa.types.is_list(kind):
        return pools["checks"].take(pa.array(rng.integers(0, len(pools["checks"]), n))).cast(kind)
    return pa.nulls(n, kind)


def _fast_table(stage: str, shard: int, inputs: list[tuple[str, str]], columns: dict[str, pa.DataType],
                fingerprint: str, pools: dict[str, pa.Array], verdicts: dict[str, str] | None
                ) -> tuple[pa.Table, list[str], dict[str, dict[str, bytes]]]:
    """One (stage, shard)'s manifest rows (sorted by sample_id, as ``commit_shard`` writes them) built column by
    column, with the old generator's status mix; and the ok ids and the tiny tar members."""
    inputs = sorted(inputs, key=lambda pair: pair[1])
    n = len(inputs)
    sids = [sid for _, sid in inputs]
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{stage}/{shard}".encode()).digest()[:8], "little"))
    p_filtered, p_failed = MIX[stage]
    draw = rng.random(n)
    status = np.where(draw < p_filtered, "filtered", np.where(draw < p_filtered + p_failed, "failed", "ok")).astype(object)
    if stage == "inpaint":
        status[rng.random(n) < 0.002] = "quarantined"
    values = {name: _column(name, kind, n, rng, pools, sids) for name, kind in columns.items()}
    if stage == "judge":
        values["verdict"] = pa.array(np.where(rng.random(n) < 0.8, "accept", "reject"))
    reason = [None if s == "ok" else f"{s}: {pools['reason'][i % len(pools['reason'])].as_py()}" for i, s in enumerate(status)]
    if stage == "export" and verdicts is not None:  # export carries the judge's verdict on; a reject is filtered
        verdict = [verdicts.get(sid) for sid in sids]
        for i, v in enumerate(verdict):
            if v == "reject" and status[i] == "ok":
                status[i], reason[i] = "filtered", "rejected by the judge"
        values["verdict"] = pa.array([v if s == "ok" else None for v, s in zip(verdict, status)], pa.string())
    ok = status == "ok"
    not_ok = pa.array(~ok)
    for name in list(values)[3:]:  # a row that is not ok keeps only its first few stage columns
        if name == "verdict" and stage == "export":
            continue
        values[name] = pa.compute.if_else(not_ok, pa.nulls(n, values[name].type), values[name])
    base = {
        "sample_id": pa.array(sids), "input_id": pa.array([i for i, _ in inputs]),
        "shard": pa.array(np.full(n, shard, np.int32)), "stage": pa.array([stage] * n),
        "status": pa.array(list(status), pa.string()), "reason": pa.array(reason, pa.string()),
        "permanent": pa.array([False if s == "failed" else None for s in status], pa.bool_()),
        "attempts": pa.array(np.where(status == "quarantined", 2, 1).astype(np.int16)),
        "fingerprint": pa.array([fingerprint] * n),
        "worker": pools["worker"].take(pa.array(rng.integers(0, len(pools["worker"]), n))),
        "seconds": pa.array((rng.random(n) * 20).astype(np.float32)),
        "model_seconds": pa.array((rng.random(n) * 15).astype(np.float32)),
        "finished_at": pa.array(((1.7e9 + rng.random(n) * 1e6) * 1000).astype(np.int64)).cast(pa.timestamp("ms", tz="UTC")),
    }
    schema = manifest_schema(columns)
    table = pa.Table.from_arrays([{**base, **values}[name].cast(schema.field(name).type) for name in schema.names], schema=schema)
    ok_ids = [sid for sid, good in zip(sids, ok) if good]
    files = {sid: {"meta.json": b"{" + b"0" * 62 + b"}"} for sid in ok_ids[:2]}
    return table, ok_ids, files


def _verdicts(stage: str, table: pa.Table) -> dict[str, Any]:
    """What a judge's commit counts besides the statuses (``ShardWorker._counted``): its ok rows per verdict."""
    if stage != "judge":
        return {}
    pairs = zip(table.column("status").to_pylist(), table.column("verdict").to_pylist())
    return {"verdicts": dict(sorted(Counter(v for s, v in pairs if s == "ok" and v).items()))}


def _fast_shards(run_dir: str, shards: Sequence[int]) -> int:
    """Write every stage of ``shards`` as ``commit_shard`` would (one process of the pool): each manifest's rows as
    Arrow columns, its footer the ``CommitInfo`` of those rows and its tar, the tar through ``write_shard``."""
    storage, graph, plan, pools = _worker_state(run_dir)
    files_out = _PlainFiles(run_dir)
    commits = 0
    for shard in shards:
        ok: dict[str, list[str]] = {}
        verdicts: dict[str, str] = {}
        for stage in graph.order:
            node = graph.nodes[stage]
            if node.cls.is_source:
                inputs = [(row["source_id"], f"{row['source_id']}-c{k}")
                          for row in plan.source_rows[stage].get(shard, []) for k in range(MAX_CLIPS)]
            elif stage == "plan":
                inputs = [(sid, f"{sid}-{task}") for sid in ok[node.deps[0]] for task in ("swap", "removal")]
            else:
                inputs = [(sid, sid) for sid in ok[node.deps[0]]]
            table, ok[stage], files = _fast_table(stage, shard, inputs, dict(node.cls.columns), node.fingerprint,
                                                  pools, verdicts if stage == "export" else None)
            if stage == "judge":
                column = table.column("verdict").to_pylist()
                verdicts = dict(zip(table.column("sample_id").to_pylist(), column))
            expected = plan.expected_inputs_digest(stage, shard)
            assert expected is not None, (stage, shard)
            tar = write_shard(files_out, node.tar_path(shard), files)  # type: ignore[arg-type]
            statuses = table.column("status").to_pylist()
            info = CommitInfo(
                stage=stage, shard=shard, fingerprint=node.fingerprint, inputs_digest=expected,
                tar_path=node.tar_path(shard), tar_sha256=tar.sha256, tar_bytes=tar.size, tar_samples=tar.samples,
                rows=table.num_rows, counts=dict(Counter(statuses)),
                ok_digest=hashlib.sha256("\n".join(sorted(ok[stage])).encode()).hexdigest()[:16],
                committed_at=time.time(),
                extra={"seconds": round(float(pa.compute.sum(table.column("seconds")).as_py() or 0.0), 3),
                       "worker": "bench", "reused": 0, "permanent_failed": 0, **_verdicts(stage, table)},
            )
            table = table.replace_schema_metadata({META_KEY: json.dumps(asdict(info)).encode()})
            table = with_run_schema(stage, table, graph.manifest_schema)
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            with open(storage.path(manifest_path(stage, shard)), "wb") as handle:
                handle.write(buffer.getvalue())
            plan.commits[(stage, shard)] = info
            commits += 1
        for stage in graph.order:  # this process's plan holds one shard's commits at a time
            del plan.commits[(stage, shard)]
    return commits


_WORKER: dict[str, tuple[Storage, Any, RunPlan, dict[str, pa.Array]]] = {}


def _worker_state(run_dir: str) -> tuple[Storage, Any, RunPlan, dict[str, pa.Array]]:
    """The run's graph, a plan (for the expected inputs digests) and the value pools, once per process."""
    if run_dir not in _WORKER:
        from pipeline.run import load_run_config

        storage = Storage(run_dir)
        graph = build_graph(load_run_config(run_dir))
        plan = RunPlan(storage, graph)  # before the folders exist: nothing to index, no derived cache written
        for stage in graph.order:
            os.makedirs(storage.path(manifest_path(stage, 0)).rsplit("/", 1)[0], exist_ok=True)
            os.makedirs(storage.path(graph.nodes[stage].tar_path(0)).rsplit("/", 1)[0], exist_ok=True)
        _WORKER[run_dir] = (storage, graph, plan, _pools(np.random.default_rng(7)))
    return _WORKER[run_dir]


def generate(run_dir: Path, samples: int, shard_size: int, workers: int, fast: bool = True) -> float:
    started = time.perf_counter()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True)
    config = validate_config(make_config(str(run_dir), shard_size))
    storage = Storage(str(run_dir))
    storage.write_bytes("run.yaml", config_to_yaml(config).encode())
    per_shard = max(1, shard_size // MAX_CLIPS)
    uris = [f"s3://bench-bucket/raw/video-{i:07d}.mp4" for i in range(samples // MAX_CLIPS)]
    rows = sorted(({"source_id": source_id_for(u), "kind": "video", "uri": u} for u in uris), key=lambda r: r["source_id"])
    write_sources(storage, "ingest", [{**row, "shard": i // per_shard} for i, row in enumerate(rows)])
    num_shards = (len(rows) + per_shard - 1) // per_shard
    work = _fast_shards if fast else _generate_shards
    step = 64 if fast else max(1, num_shards // workers + 1)  # small chunks keep every process busy to the end
    chunks = [list(range(num_shards))[i:i + step] for i in range(0, num_shards, step)]
    if workers == 1:
        done = sum(work(str(run_dir), chunk) for chunk in chunks)
    else:
        with ProcessPoolExecutor(workers) as pool:
            done = sum(pool.map(work, [str(run_dir)] * len(chunks), chunks))
    storage.write_bytes(ENDED_CLEAN, b"")  # what the driver of a run that resolved every shard leaves last
    print(f"  generated {run_dir}: {num_shards} shards x 7 stages = {done} commits in {time.perf_counter() - started:.0f} s",
          flush=True)
    return time.perf_counter() - started


# Measuring -------------------------------------------------------------------------------------------------
RESUME = """
import sys, time
from pipeline.run import _clean_leftovers, load_run_config, note_clean_end, open_run
from pipeline.runner import Driver
from pipeline.plan import State
def refuse():
    raise SystemExit('resume planning found work to dispatch')
t = time.perf_counter()
storage, graph, plan = open_run(load_run_config(sys.argv[1]))
assert not plan.stale_stages()
_clean_leftovers(storage, plan)
report = Driver(storage, graph, plan, connect=refuse).run()
assert not report.blocked and not report.errors, report
note_clean_end(storage, report)  # as the driver does last: the next start skips the walk of the stage folders
print(f'{sum(plan.num_shards(s) for s in graph.order)} shards resolved in {time.perf_counter() - t:.3f} s')
"""
FAILED_SQL = "select count(*) from manifests where status = 'failed'"
ROWS_SQL = "select stage, sample_id, reason from manifests where status = 'quarantined' order by sample_id"


@dataclass
class Measure:
    wall: float
    cpu: float
    rss_mib: float
    out: str


def run_cmd(args: list[str]) -> Measure:
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "200"})
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0,):
        raise SystemExit(f"{' '.join(args[:4])}... exited {code}:\n{out[-3000:]}")
    return Measure(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out)


def commands(run: str) -> dict[str, list[str]]:
    return {
        "status": [*FFP, "status", run],
        "plan": [*FFP, "plan", run],
        "resume": [sys.executable, "-c", RESUME, run],
        "query count": [*FFP, "query", run, FAILED_SQL],
        "query rows": [*FFP, "query", run, ROWS_SQL, "--limit", "5"],
        "verify": [*FFP, "verify", run],
    }


def baseline() -> Measure:
    """Interpreter + imports of the CLI, nothing read: the floor under every command."""
    return run_cmd([*FFP, "--help"])


def machine() -> str:
    import duckdb

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "?")
    fs = subprocess.run(["df", "-T", "/tmp"], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, pyarrow "
            f"{pa.__version__}, duckdb {duckdb.__version__}, /tmp on {fs}, load {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[3000, 30000, 300000])
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each command (first one + best of the rest)")
    parser.add_argument("--cache", default="/tmp/ffp-bench-manifests")
    parser.add_argument("--workers", type=int, default=2, help="processes generating a run")
    parser.add_argument("--verify-max", type=int, default=30000, help="largest size ffp verify is timed on")
    parser.add_argument("--only", nargs="*", help="commands to time (default: all)")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--commit-generator", action="store_true",
                        help="generate through commit_shard, row by row (the old, slow path: ~100x the CPU)")
    args = parser.parse_args()

    print(machine())
    floor = baseline()
    print(f"floor (python -m pipeline --help): {floor.wall:.2f} s wall, {floor.cpu:.2f} s CPU, {floor.rss_mib:.0f} MiB")
    results: dict[int, dict[str, tuple[Measure, Measure]]] = {}
    shards: dict[int, int] = {}
    for samples in args.samples:
        version = "1" if args.commit_generator else GENERATOR_VERSION
        run_dir = Path(args.cache) / f"v{version}-n{samples}-s{args.shard_size}"
        marker = run_dir.with_suffix(".done")
        if args.regenerate or not marker.exists():
            marker.unlink(missing_ok=True)
            generate(run_dir, samples, args.shard_size, args.workers, fast=not args.commit_generator)
            marker.write_text("ok")
        shards[samples] = len(list((run_dir / "manifests" / "ingest").glob("shard-*.parquet")))
        results[samples] = {}
        for name, cmd in commands(str(run_dir)).items():
            if args.only and name not in args.only or name == "verify" and samples > args.verify_max:
                continue
            runs = [run_cmd(cmd) for _ in range(max(1, args.repeat))]
            first, best = runs[0], min(runs[1:] or runs, key=lambda m: m.cpu)
            results[samples][name] = (first, best)
            print(f"  {samples:>7} {name:<12} first {first.wall:6.2f} s  best {best.wall:6.2f} s wall, "
                  f"{best.cpu:6.2f} s CPU, {best.rss_mib:5.0f} MiB", flush=True)
        print(f"    query: {results[samples]['query count'][1].out.strip().splitlines()[-2:] if 'query count' in results[samples] else ''}")
    print_table(args.samples, shards, results)


def print_table(sizes: list[int], shards: dict[int, int], results: dict[int, dict[str, tuple[Measure, Measure]]]) -> None:
    names = [n for n in commands("") if any(n in results[s] for s in sizes)]
    print("\nbest (least CPU) of the repeated runs (warm page cache): wall s / CPU s / peak RSS MiB; first run's wall in brackets")
    header = f"{'samples':>8} {'shards':>7} {'manifests':>9} " + " ".join(f"{n:>26}" for n in names)
    print(header)
    for s in sizes:
        cells = []
        for n in names:
            if n not in results[s]:
                cells.append(f"{'-':>26}")
                continue
            first, best = results[s][n]
            cells.append(f"{best.wall:6.2f}/{best.cpu:5.2f}/{best.rss_mib:4.0f} ({first.wall:5.2f})".rjust(26))
        print(f"{s:>8} {shards[s]:>7} {shards[s] * 7:>9} " + " ".join(cells))
    for size in sizes:
        over = [f"{n} {results[size][n][1].cpu:.2f} s" for n in names if n in results[size] and results[size][n][1].cpu > GOAL_CPU_S]
        print(f"{size:>8}: {'over the ' + str(GOAL_CPU_S) + ' s CPU goal: ' + ', '.join(over) if over else 'every command within the ' + str(GOAL_CPU_S) + ' s CPU goal'}")
    print("growth of the best CPU time (x per step in samples):")
    for prev, cur in zip(sizes, sizes[1:]):
        cells = []
        for n in names:
            a, b = results[prev].get(n), results[cur].get(n)
            cells.append(f"{b[1].cpu / a[1].cpu:26.2f}" if a and b else f"{'-':>26}")
        print(f"{prev:>8}->{cur:<8} {'':>8} " + " ".join(cells))


if __name__ == "__main__":
    main()
