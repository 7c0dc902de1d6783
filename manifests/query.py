"""SQL over a run's manifests with DuckDB, for local and object-store run folders alike.

Views: ``manifests`` (every stage, columns unioned by name), one view per stage (``ingest``,
``augment``, ...), and the review labels: ``labels`` (the current decision per judged pair) and
``label_history`` (every decision, see ``manifests.labels``). The same data reads without our code:
``duckdb.sql("select * from read_parquet('RUN/manifests/**/*.parquet', union_by_name=true)")``.

Local manifests are read by DuckDB itself (``read_parquet``, multi-threaded). Remote ones are fetched
through fsspec into Arrow tables first: handing DuckDB a dataset backed by a Python filesystem makes its
scan threads call back into Python, which can deadlock on the GIL.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.labels import read_label_history
from manifests.storage import Storage

VIEW_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def stage_names(run: Storage) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in run.fs.ls(run.path("manifests"), detail=False)) if run.exists("manifests") else []


def _manifest_files(run: Storage, stage: str | None) -> list[str]:
    pattern = f"manifests/{stage}" if stage else "manifests/*"
    return run.list(pattern, pattern="shard-*.parquet")


def _register(con: duckdb.DuckDBPyConnection, run: Storage, name: str, files: list[str], fetched: dict[str, pa.Table]) -> None:
    if run.is_local:
        paths = ", ".join("'" + run.path(rel).replace("'", "''") + "'" for rel in files)
        con.execute(f'create view "{name}" as select * from read_parquet([{paths}], union_by_name=true)')
        return
    for rel in files:
        if rel not in fetched:
            with run.open(rel) as handle:
                fetched[rel] = pq.read_table(handle).replace_schema_metadata(None)
    con.register(name, pa.concat_tables([fetched[rel] for rel in files], promote_options="permissive"))


def _register_labels(con: duckdb.DuckDBPyConnection, run: Storage) -> None:
    history = read_label_history(run)
    con.register("label_history", history.append_column("seq", pa.array(range(history.num_rows), pa.int64())))
    con.execute("create view labels as select * exclude (rank, seq) from (select *, row_number() over "
                "(partition by stage, sample_id order by seq desc) as rank from label_history) where rank = 1")


def connect(run: Storage) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    _register_labels(con, run)
    everything = _manifest_files(run, None)
    if not everything:
        con.execute("create view manifests as select null::varchar as sample_id, null::varchar as stage, "
                    "null::varchar as status where false")
        return con
    fetched: dict[str, pa.Table] = {}  # remote manifests, each fetched once
    _register(con, run, "manifests", everything, fetched)
    for stage in stage_names(run):
        files = _manifest_files(run, stage)
        if files and VIEW_NAME.fullmatch(stage):
            _register(con, run, stage, files, fetched)
    return con


def query(run: Storage, sql: str, params: list[object] | None = None) -> pa.Table:
    return connect(run).sql(sql, params=params).to_arrow_table()
