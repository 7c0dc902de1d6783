"""SQL over a run's manifests with DuckDB, for local and object-store run folders alike.

Views: ``manifests`` (every stage, columns unioned by name), one view per stage (``ingest``,
``augment``, ...) with that stage's own columns (a manifest holds every stage's, see
``manifests.manifest.COLUMNS_KEY``), and the review labels: ``labels`` (the current decision per judged pair) and
``label_history`` (every decision, see ``manifests.labels``). A stage of the run's config with no manifest yet
has its view too, empty and typed (as are the columns it adds to ``manifests``), so a query over a run that has
committed nothing yet answers with no rows. The same data reads without our code:
``duckdb.sql("select * from read_parquet('RUN/manifests/**/*.parquet', union_by_name=true)")``, or
``pd.read_parquet("RUN/manifests")`` (a run committed before issue 23 needs ``union_by_name``).

Local manifests are read by DuckDB itself (``read_parquet``, multi-threaded), through a derived copy of
each stage's rows (``index/rows/<stage>.parquet``, see :func:`_stage_relation`): opening one Parquet file per
shard costs about 0.25 ms of CPU, so a query over a 300K-sample run would spend seconds opening 33K
manifests. Remote ones are fetched through fsspec into Arrow tables first: handing DuckDB a dataset backed
by a Python filesystem makes its scan threads call back into Python, which can deadlock on the GIL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Collection

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from manifests import layout
from manifests.labels import label_files, read_label_history
from manifests.layout import RUN_YAML
from manifests.manifest import COLUMNS_KEY, RACY_NS, list_manifests, manifest_schema, stage_columns_of
from manifests.parquet import read_parquet
from manifests.storage import TEMP_MARKER, Storage

VIEW_NAME = re.compile(r"[a-z_][a-z0-9_]*")
SOURCE_COLUMN = "_ffp_manifest"
SOURCES_KEY = b"ffp_sources"
FOLDER_KEY = b"ffp_folder"
PATCH_LIMIT = 256
"""Changed manifests read next to the copy of a stage's rows; more than this (or a quarter of them) rebuilds it."""
log = logging.getLogger("ffp.query")


def stage_names(run: Storage) -> list[str]:
    return run.folders(layout.MANIFESTS_DIR)


def _manifest_files(run: Storage, stage: str | None) -> list[str]:
    return run.list(layout.manifests_dir(stage or None), pattern=layout.MANIFEST_PATTERN)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read(run: Storage, files: list[str]) -> str:
    return f"read_parquet([{', '.join(_quote(run.path(rel)) for rel in files)}], union_by_name=true)"


def _own_columns(con: duckdb.DuckDBPyConnection, run: Storage, files: list[str]) -> list[str] | None:
    """The columns the stage of these manifests writes, in its order (``manifests.manifest.COLUMNS_KEY``, or
    every column of a manifest written with its stage's schema only), from their footers; None when every column
    of every one is the stage's."""
    paths = ", ".join(_quote(run.path(rel)) for rel in files)
    found = con.execute(f"select file_name, value from parquet_kv_metadata([{paths}]) "
                        f"where key = {_quote(COLUMNS_KEY.decode())}").fetchall()
    if not found:
        return None
    own = dict.fromkeys(name for _, value in found for name in json.loads(value))
    tagged = {name for name, _ in found}
    legacy = [rel for rel in files if run.path(rel) not in tagged]
    if legacy:
        described = con.execute(f"describe select * from {_read(run, legacy)}").fetchall()
        own.update(dict.fromkeys(row[0] for row in described))
    return list(own)


def _columns_in(own: list[str] | None, *also: str) -> str:
    """The select list of ``own`` columns (and ``also``); ``*`` (every column) for None."""
    if own is None:
        return "*"
    return ", ".join('"' + name.replace('"', '""') + '"' for name in dict.fromkeys([*own, *also]))


def _stage_relation(con: duckdb.DuckDBPyConnection, run: Storage, stage: str) -> str | None:
    """SQL for every manifest row of a local stage, or ``None`` when it has no manifest.

    The rows come from ``index/rows/<stage>.parquet``, a copy of the stage's manifests that records the inode,
    size and mtime of each manifest it holds (and, per row, the manifest it came from), and the inode and mtime of
    the stage's manifest folder when it was listed for the copy. The manifests stay the truth, checked as the
    commit index does (``manifests.manifest.read_commit_index``): a folder with the same inode and mtime as then,
    that mtime older than ``RACY_NS`` at the listing, has had no manifest committed, removed or renamed into it, and
    the copy is read as it is, with no listing. Otherwise the folder is listed: a manifest listed with another stat
    (or changed within ``RACY_NS`` of the copy's write) has its rows read from the manifest itself and its old rows
    left out; a removed one drops out. When too many changed, the copy is rebuilt first (best effort: if it cannot
    be written, the manifests are read)."""
    copy = layout.rows_cache(stage)
    listed_ns = time.time_ns()
    folder = _folder_state(run, stage)
    if folder is None:
        return None
    kept = _copy_folder(run, copy)
    base = f"select * exclude ({SOURCE_COLUMN}) from read_parquet({_quote(run.path(copy))})"
    if kept is not None and kept[:2] == folder and folder[1] < kept[2] - RACY_NS:
        return base  # nothing committed or removed since the copy's listing
    listed = dict(list_manifests(run, stage))
    if not listed:
        return None
    held, copy_mtime = _copy_sources(run, copy)
    stale = sorted(rel for rel, stat in listed.items() if held.get(rel) != stat or stat[2] >= copy_mtime - RACY_NS)
    gone = sorted(set(held) - set(listed))
    if ((len(stale) + len(gone) > min(PATCH_LIMIT, len(listed) // 4) or (kept is None and held))
            and _rebuild(con, run, copy, listed, [*folder, listed_ns])):
        held, copy_mtime = _copy_sources(run, copy)
        stale = sorted(rel for rel, stat in listed.items() if held.get(rel) != stat or stat[2] >= copy_mtime - RACY_NS)
        gone = sorted(set(held) - set(listed))
    if not held:
        return f"select {_columns_in(_own_columns(con, run, sorted(listed)))} from {_read(run, sorted(listed))}"
    dropped = stale + gone
    if dropped:
        base += f" where {SOURCE_COLUMN} not in ({', '.join(_quote(rel) for rel in dropped)})"
    if not stale:
        return base
    return f"{base} union all by name select {_columns_in(_own_columns(con, run, stale))} from {_read(run, stale)}"


def _folder_state(run: Storage, stage: str) -> list[int] | None:
    """``[inode, mtime_ns]`` of a local stage's manifest folder (None when there is none)."""
    try:
        found = os.stat(run.path(layout.manifests_dir(stage)))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [found.st_ino, found.st_mtime_ns]


def _copy_folder(run: Storage, copy: str) -> list[int] | None:
    """``[inode, mtime_ns, listed at]`` of the stage's folder when the copy was made from its listing (None: unknown)."""
    try:
        raw = (pq.read_metadata(run.path(copy)).metadata or {})[FOLDER_KEY]
        found = [int(v) for v in json.loads(raw)]
        return found if len(found) == 3 else None
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
        return None


def _copy_sources(run: Storage, copy: str) -> tuple[dict[str, tuple[int, int, int]], int]:
    """The manifests (with their stat) a stage's copy holds, and the copy's mtime; empty when there is none."""
    try:
        mtime = os.stat(run.path(copy)).st_mtime_ns
        raw = (pq.read_metadata(run.path(copy)).metadata or {})[SOURCES_KEY]
        return {rel: tuple(stat) for rel, stat in json.loads(raw).items()}, mtime  # type: ignore[misc]
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return {}, 0


def _rebuild(con: duckdb.DuckDBPyConnection, run: Storage, copy: str, listed: dict[str, tuple[int, int, int]],
             folder: list[int]) -> bool:
    """Write a stage's copy from the manifests ``listed`` (stat taken before reading: a manifest replaced
    meanwhile shows another stat next time and is read again); ``folder``: the folder's ``[inode, mtime_ns]``
    taken before the listing, and when. The copy holds the stage's own columns only (``_own_columns``)."""
    target = run.path(copy)
    temp = f"{target}{TEMP_MARKER}{uuid.uuid4().hex[:12]}"
    files = sorted(listed)
    sources = json.dumps({rel: list(listed[rel]) for rel in files}).replace("'", "''")
    prefix = len(run.path("x")) - 1  # the run folder with its trailing slash: rows name their manifest by rel
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        own = _columns_in(_own_columns(con, run, files), SOURCE_COLUMN)
        rows = (f"select {own} from read_parquet([{', '.join(_quote(run.path(rel)) for rel in files)}], "
                f"union_by_name=true, filename='{SOURCE_COLUMN}')")
        con.execute(
            f"copy (select * replace (substr({SOURCE_COLUMN}, {prefix + 1}) as {SOURCE_COLUMN}) from ({rows})) "
            f"to {_quote(temp)} (format parquet, compression zstd, "
            f"kv_metadata {{{SOURCES_KEY.decode()}: '{sources}', {FOLDER_KEY.decode()}: '{json.dumps(folder)}'}})"
        )
        os.replace(temp, target)
        return True
    except (OSError, duckdb.Error) as exc:  # read-only or full run folder: read the manifests instead
        log.debug("rows copy %s not written: %s", copy, exc)
        if os.path.exists(temp):
            os.remove(temp)
        return False


def _register(con: duckdb.DuckDBPyConnection, run: Storage, name: str, files: list[str], fetched: dict[str, pa.Table]) -> None:
    """A view of these manifests' rows, each with its stage's own columns (fetched once, kept in ``fetched``)."""
    for rel in files:
        if rel not in fetched:
            fetched[rel] = stage_columns_of(read_parquet(run, rel)).replace_schema_metadata(None)
    con.register(name, pa.concat_tables([fetched[rel] for rel in files], promote_options="permissive"))


EMPTY_LABEL_HISTORY = ("select null::varchar as stage, null::varchar as sample_id, null::integer as shard, null::varchar as "
                       "decision, null::varchar as reviewer, null::timestamptz as at, null::varchar as note, "
                       "null::bigint as seq where false")


def _register_labels(con: duckdb.DuckDBPyConnection, run: Storage) -> None:
    if not label_files(run):  # the usual case: no Arrow table to hand over (DuckDB imports pandas for one)
        con.execute(f"create view label_history as {EMPTY_LABEL_HISTORY}")
        con.execute("create view labels as select * exclude (seq) from label_history")
        return
    history = read_label_history(run)
    con.register("label_history", history.append_column("seq", pa.array(range(history.num_rows), pa.int64())))
    con.execute("create view labels as select * exclude (rank, seq) from (select *, row_number() over "
                "(partition by stage, sample_id order by seq desc) as rank from label_history) where rank = 1")


def declared_schemas(run: Storage, committed: Collection[str] = ()) -> dict[str, pa.Schema]:
    """The manifest schema of each stage of the run's config (``run.yaml``) but the ``committed`` ones, from its
    stage type's columns (a stage module is imported only for a stage with no manifest yet); empty when the
    config cannot be read (the views then hold what the manifests have)."""
    try:
        stages = yaml.safe_load(run.read_bytes(RUN_YAML))["stages"]
        wanted = {name: spec["type"] for name, spec in stages.items() if name not in committed}
        if not wanted:
            return {}
        from stages.registry import stage_class  # the stage types declare their columns

        return {name: manifest_schema(stage_class(type_name).columns) for name, type_name in wanted.items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, ImportError, AttributeError) as exc:
        log.debug("no declared stage columns for %s: %s", run.root, exc)
        return {}


def _empty_relation(schema: pa.Schema) -> str:
    """SQL for no rows with the columns (and types) of ``schema``."""
    columns = ", ".join(f'null::{_sql_type(field.type)} as "{field.name}"' for field in schema)
    return f"select {columns} where false"


def _sql_type(arrow: pa.DataType) -> str:
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        return f"{_sql_type(arrow.value_type)}[]"
    if pa.types.is_timestamp(arrow):
        return "timestamptz" if arrow.tz else "timestamp"
    names = {pa.bool_(): "boolean", pa.int8(): "tinyint", pa.int16(): "smallint", pa.int32(): "integer",
             pa.int64(): "bigint", pa.float32(): "float", pa.float64(): "double", pa.binary(): "blob"}
    return names.get(arrow, "varchar")


def connect(run: Storage) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    _register_labels(con, run)
    if run.is_local:
        relations = {stage: _stage_relation(con, run, stage) for stage in stage_names(run)}
        found = {stage: sql for stage, sql in relations.items() if sql is not None}
        _create_views(con, found, declared_schemas(run, committed=found))
        return con
    everything = _manifest_files(run, None)
    fetched: dict[str, pa.Table] = {}  # remote manifests, each fetched once
    committed: dict[str, str] = {}
    if everything:
        _register(con, run, "_ffp_manifests", everything, fetched)
    for stage in stage_names(run):
        files = _manifest_files(run, stage)
        if files and VIEW_NAME.fullmatch(stage):
            _register(con, run, f"_ffp_{stage}", files, fetched)
            committed[stage] = f'select * from "_ffp_{stage}"'
    declared = declared_schemas(run, committed=committed)
    _create_views(con, committed, declared, everything="select * from _ffp_manifests" if everything else None)
    return con


def _create_views(con: duckdb.DuckDBPyConnection, committed: dict[str, str], declared: dict[str, pa.Schema],
                  everything: str | None = None) -> None:
    """One view per stage (its committed rows, or none with its declared columns) and ``manifests`` over them all
    (``everything``: the rows of every manifest, when given as one relation)."""
    empty = {stage: _empty_relation(schema) for stage, schema in declared.items() if stage not in committed}
    for stage, sql in {**committed, **empty}.items():
        if VIEW_NAME.fullmatch(stage):
            con.execute(f'create view "{stage}" as {sql}')
    parts = ([everything] if everything else list(committed.values())) + list(empty.values())
    union = " union all by name ".join(f"({sql})" for sql in parts) or _empty_relation(manifest_schema({}))
    con.execute(f"create view manifests as {union}")


def query(run: Storage, sql: str, params: list[object] | None = None) -> pa.Table:
    return connect(run).sql(sql, params=params).to_arrow_table()
