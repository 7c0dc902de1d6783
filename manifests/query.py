"""SQL over a run's manifests with DuckDB, for local and object-store run folders alike.

Views: ``manifests`` (every stage, columns unioned by name) and one view per stage (``ingest``,
``augment``, ...). The same data reads without our code:
``duckdb.sql("select * from read_parquet('RUN/manifests/**/*.parquet', union_by_name=true)")``.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from manifests.storage import Storage


def stage_names(run: Storage) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in run.fs.ls(run.path("manifests"), detail=False)) if run.exists("manifests") else []


def manifest_dataset(run: Storage, stage: str | None = None) -> pads.Dataset | None:
    """All committed manifests (of one stage, or all) as one Arrow dataset with a unified schema."""
    pattern = f"manifests/{stage}" if stage else "manifests/*"
    files = [run.path(rel) for rel in run.list(pattern, pattern="shard-*.parquet")]
    if not files:
        return None
    filesystem = PyFileSystem(FSSpecHandler(run.fs))
    schemas = []
    for path in files:
        with run.fs.open(path, "rb") as handle:
            schemas.append(pq.read_schema(handle).remove_metadata())
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    return pads.dataset(files, schema=schema, format="parquet", filesystem=filesystem)


def connect(run: Storage) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    everything = manifest_dataset(run)
    if everything is None:
        con.execute("create view manifests as select null::varchar as sample_id, null::varchar as stage, "
                    "null::varchar as status where false")
        return con
    con.register("manifests", everything)
    for stage in stage_names(run):
        dataset = manifest_dataset(run, stage)
        if dataset is not None and re.fullmatch(r"[a-z_][a-z0-9_]*", stage):
            con.register(stage, dataset)
    return con


def query(run: Storage, sql: str, params: list[object] | None = None) -> pa.Table:
    return connect(run).sql(sql, params=params).to_arrow_table()
