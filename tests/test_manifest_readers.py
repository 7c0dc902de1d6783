"""A run's manifests read by any Parquet reader: every file has the run's schema (``run_manifest_schema``), so
pandas, pyarrow and Hugging Face ``datasets`` see the columns DuckDB's ``union_by_name`` sees, while ffp's own
readers (the query views, ``read_manifest``, ``committed_tables``) still see each stage's own columns."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from manifests.manifest import (
    COLUMNS_KEY,
    committed_tables,
    manifest_schema,
    read_manifest,
    run_manifest_schema,
)
from manifests.query import query
from manifests.storage import Storage
from pipeline.graph import GraphError, build_graph
from stages.registry import STAGES, stage_class
from tests.conftest import run_local, synth_config

INGEST_ONLY = "num_instances"  # a column the ingest writes and no later stage of the synthetic track
EXPORT_ONLY = "src_bytes"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_vos: Path) -> Path:
    """A finished synthetic-track run (ingest -> synth_augment -> export), finalized."""
    run_dir = tmp_path_factory.mktemp("readers") / "run"
    run_local(synth_config(run_dir, demo_vos, shard_size=1), finalize=True)  # 6 shards a stage
    return run_dir


def duckdb_view(run_dir: Path) -> pa.Table:
    sql = f"select * from read_parquet('{run_dir}/manifests/**/*.parquet', union_by_name=true)"
    return duckdb.sql(sql).to_arrow_table()


def by_sample(table: pa.Table, column: str) -> dict[tuple[str, str], object]:
    rows = table.select(["stage", "sample_id", column]).to_pylist()
    return {(row["stage"], row["sample_id"]): row[column] for row in rows}


def test_every_parquet_reader_sees_every_column_and_row_of_the_manifests(run):
    import pandas as pd

    duck = duckdb_view(run)
    graph = build_graph(synth_config(run, "unused"))
    assert set(duck.column_names) == set(graph.manifest_schema.names)
    assert {INGEST_ONLY, EXPORT_ONLY, "augmentation"} <= set(duck.column_names)
    frame = pd.read_parquet(run / "manifests")
    readers = {
        "pyarrow.dataset": pads.dataset(run / "manifests").to_table(),
        "pq.read_table": pq.read_table(run / "manifests"),
        "pandas": pa.Table.from_pandas(frame, preserve_index=False),
    }
    for name, table in readers.items():
        assert set(table.column_names) == set(duck.column_names), name
        assert table.num_rows == duck.num_rows, name
        for column in (INGEST_ONLY, EXPORT_ONLY):  # a column only one stage writes keeps its values
            assert by_sample(table, column) == by_sample(duck, column), (name, column)
    values = [v for v in by_sample(duck, INGEST_ONLY).values() if v is not None]
    assert values and duck.filter(pads.field("stage") == "ingest").num_rows == len(values)


def test_hugging_face_datasets_read_the_manifests_whole(run, tmp_path):
    datasets = pytest.importorskip("datasets")
    duck = duckdb_view(run)
    loaded = datasets.load_dataset("parquet", data_files=str(run / "manifests" / "*" / "*.parquet"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert set(loaded.column_names) == set(duck.column_names)
    assert loaded.num_rows == duck.num_rows
    assert sorted(filter(None, loaded[INGEST_ONLY])) == sorted(filter(None, duck.column(INGEST_ONLY).to_pylist()))


def test_a_stage_view_shows_its_own_columns_and_manifests_all_of_them(run):
    storage = Storage(str(run))
    graph = build_graph(synth_config(run, "unused"))
    for stage, node in graph.nodes.items():
        described = [row["column_name"] for row in query(storage, f"describe {stage}").to_pylist()]
        assert described == manifest_schema(node.columns).names, stage
    assert INGEST_ONLY not in [row["column_name"] for row in query(storage, "describe export").to_pylist()]
    everything = query(storage, "select * from manifests")
    assert set(everything.column_names) == set(graph.manifest_schema.names)
    assert everything.num_rows == duckdb_view(run).num_rows


def test_a_run_on_object_storage_has_the_same_views(run, s3):
    import s3fs

    url = f"{s3}/readers/run"
    s3fs.S3FileSystem().put(str(run), url, recursive=True)
    local, remote = Storage(str(run)), Storage(url)
    for stage in ("ingest", "augment", "export", "manifests"):
        assert query(remote, f"describe {stage}").equals(query(local, f"describe {stage}")), stage
    counted = "select stage, count(*) as n, count(num_instances) as m from manifests group by stage order by stage"
    assert query(remote, counted).equals(query(local, counted))


def test_ffp_readers_and_the_published_dataset_keep_a_stage_to_its_columns(run):
    storage = Storage(str(run))
    graph = build_graph(synth_config(run, "unused"))
    export = manifest_schema(graph.nodes["export"].columns).names
    found = read_manifest(storage, "ingest", 0)
    assert found is not None and found[1].column_names == manifest_schema(graph.nodes["ingest"].columns).names
    assert all(table.column_names == export for table in committed_tables(storage, "export"))
    assert pq.read_schema(run / "export" / "dataset.parquet").names == export


def test_a_run_committed_before_with_a_schema_per_stage_still_queries(run, tmp_path):
    """A stage's manifests of both kinds (a run resumed with this version): the views are as before."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "index", ignore_errors=True)
    storage = Storage(str(copy))
    old = copy / "manifests" / "ingest" / "shard-000000.parquet"
    table = pq.read_table(old)
    own = manifest_schema(build_graph(synth_config(run, "unused")).nodes["ingest"].columns)
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != COLUMNS_KEY}
    pq.write_table(table.select(own.names).replace_schema_metadata(metadata), old, compression="zstd")
    described = [row["column_name"] for row in query(storage, "describe ingest").to_pylist()]
    assert described == own.names
    counted = query(storage, "select stage, count(*) as n from manifests group by stage order by stage").to_pylist()
    before = query(Storage(str(run)), "select stage, count(*) as n from manifests group by stage order by stage")
    assert counted == before.to_pylist()
    assert query(storage, f"select count({INGEST_ONLY}) as n from ingest").column("n")[0].as_py() > 0


def test_a_manifest_committed_after_the_query_copy_is_read_next_to_it_with_its_own_columns(run, tmp_path, monkeypatch):
    from manifests import query as query_module

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "index", ignore_errors=True)
    long_ago = time.time() - 3600  # past the racy window: the copy of the rows is trusted
    for path in [copy / "manifests", *(copy / "manifests").rglob("*")]:
        os.utime(path, (long_ago, long_ago))
    storage = Storage(str(copy))
    own = [row["column_name"] for row in query(storage, "describe ingest").to_pylist()]  # makes the copy
    committed = copy / "manifests" / "ingest" / "shard-000001.parquet"
    rewritten = committed.with_name("new.tmp")
    rewritten.write_bytes(committed.read_bytes())
    os.replace(rewritten, committed)  # as a commit writes it: another inode, a new mtime
    monkeypatch.setattr(query_module, "_rebuild", lambda *args: pytest.fail("one new manifest rebuilt the copy"))
    assert [row["column_name"] for row in query(storage, "describe ingest").to_pylist()] == own
    counted = "select count(*) as n, count(num_instances) as m from ingest"
    assert query(storage, counted).equals(query(Storage(str(run)), counted))


def test_every_registered_stage_type_gives_a_column_one_type():
    schema = run_manifest_schema({name: stage_class(name).columns for name in STAGES})
    for name in STAGES:
        for column, arrow in stage_class(name).columns.items():
            assert schema.field(column).type == arrow, (name, column)


def test_two_stages_that_type_a_column_differently_are_refused_when_the_graph_is_built(monkeypatch, demo_vos, tmp_path):
    augment = stage_class("synth_augment")
    monkeypatch.setattr(augment, "columns", {**augment.columns, "width": pa.string()})  # the ingest's is int16
    with pytest.raises(GraphError, match="'ingest' and 'augment' both write manifest column 'width'"):
        build_graph(synth_config(tmp_path / "run", demo_vos))
