"""Query results written as CSV, JSON lines, JSON and Parquet (``manifests.tabular``): every column type a
manifest has, with nulls, empty lists, unicode, commas, quotes and line breaks, reads back with the same values."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
import yaml

from manifests.tabular import FORMATS, plain_rows, write_table
from pipeline.config import validate_config
from pipeline.graph import build_graph

PRESETS = Path(__file__).resolve().parents[1] / "pipeline" / "presets"
TRACKS = ("local-tiny", "style-tiny", "synth-vos")  # the local, style and synthetic tracks
EDGY_TEXT = 'a, "quoted" cell\nsecond line\ttab ü 漢字 🎬'


def every_manifest_field() -> list[pa.Field]:
    """Every column of the manifests of a run of each track (the run's schema), named once."""
    fields: dict[str, pa.Field] = {}
    for preset in TRACKS:
        graph = build_graph(validate_config(yaml.safe_load((PRESETS / f"{preset}.yaml").read_text())))
        for manifest_field in graph.manifest_schema:
            fields.setdefault(manifest_field.name, manifest_field)
    return list(fields.values())


def values_of(kind: pa.DataType) -> list[Any]:
    """Four values of a type: ordinary, edgy (empty, unicode, separators, line breaks), another, null."""
    if pa.types.is_string(kind):
        return ["plain", EDGY_TEXT, "", None]
    if pa.types.is_boolean(kind):
        return [True, False, True, None]
    if pa.types.is_integer(kind):
        return [7, -1, 0, None]
    if pa.types.is_floating(kind):
        return [3.25, -1.5, 0.0, None]
    if pa.types.is_timestamp(kind):
        utc = timezone.utc
        return [datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=utc), datetime(1999, 12, 31, 23, 59, 59, tzinfo=utc),
                datetime(2026, 6, 1, tzinfo=utc), None]
    if pa.types.is_list(kind) and pa.types.is_string(kind.value_type):
        return [["psnr_outside"], ["a,b", 'say "hi"\nok', "ü", None], [], None]
    if pa.types.is_list(kind) and pa.types.is_floating(kind.value_type):
        return [[1.5, -2.0], [0.25, None], [], None]
    raise AssertionError(f"a manifest column type this test does not cover: {kind}")


@pytest.fixture(scope="module")
def table() -> pa.Table:
    fields = every_manifest_field()
    assert {"reject_reasons", "finished_at", "box_score", "plan_raw"} <= {f.name for f in fields}
    return pa.table({f.name: pa.array(values_of(f.type), f.type) for f in fields})


def written(table: pa.Table, fmt: str) -> bytes:
    out = io.BytesIO()
    write_table(table, fmt, out)
    return out.getvalue()


def nested(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_struct(kind) or pa.types.is_map(kind)


def test_every_manifest_type_covers_the_edges(table):
    types = {str(f.type) for f in table.schema}
    assert {"string", "bool", "int8", "int16", "int32", "int64", "float", "timestamp[ms, tz=UTC]",
            "list<item: string>", "list<item: float>"} <= types


def test_csv_reads_back_with_pyarrow_lists_as_json_text(table):
    data = written(table, "csv")
    types = {f.name: (pa.string() if nested(f.type) else f.type) for f in table.schema}
    back = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
        column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False))
    assert back.column_names == table.column_names and back.num_rows == table.num_rows
    for f in table.schema:
        expected = table.column(f.name).to_pylist()
        found = back.column(f.name).to_pylist()
        if nested(f.type):
            found = [None if cell is None else json.loads(cell) for cell in found]
        assert found == expected, f.name


def test_csv_is_valid_for_pandas_and_duckdb(table, tmp_path):
    import pandas as pd

    path = tmp_path / "result.csv"
    path.write_bytes(written(table, "csv"))
    frame = pd.read_csv(path)
    assert list(frame.columns) == table.column_names and len(frame) == table.num_rows
    assert json.loads(frame["reject_reasons"][1]) == ["a,b", 'say "hi"\nok', "ü", None]
    assert frame["plan_raw"][1] == EDGY_TEXT
    duck = duckdb.sql(f"select * from read_csv('{path}', header=true)").to_arrow_table()
    assert duck.num_rows == table.num_rows and duck.column("plan_raw")[1].as_py() == EDGY_TEXT


def test_json_lines_read_back_with_pyarrow(table):
    data = written(table, "jsonl")
    assert len(data.splitlines()) == table.num_rows
    back = pajson.read_json(io.BytesIO(data), parse_options=pajson.ParseOptions(explicit_schema=table.schema))
    assert back.to_pylist() == table.to_pylist()


def test_json_is_one_array_with_iso_times_as_json_printed_before(table):
    rows = json.loads(written(table, "json"))
    assert rows == [json.loads(line) for line in written(table, "jsonl").splitlines()]
    assert rows[0]["finished_at"] == "2026-01-02T03:04:05.678+00:00"
    before = json.loads(json.dumps(table.to_pylist(), default=str))  # what `ffp query --json` printed
    for old, new in zip(before, rows):
        assert _time(new["finished_at"]) == _time(old["finished_at"])
        del new["finished_at"], old["finished_at"]
        assert new == old


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def test_parquet_goes_to_a_pipe(table):
    read, write = os.pipe()
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_drain(read)))
    reader.start()
    with open(write, "wb", buffering=0) as pipe:  # not seekable: no tell, no seek
        write_table(table, "parquet", pipe)
    reader.join()
    assert pq.read_table(pa.BufferReader(bytes(received))).equals(table)


def _drain(fd: int) -> bytes:
    with open(fd, "rb") as pipe:
        return pipe.read()


def test_binary_maps_and_structs_are_documented_text():
    other = pa.table({
        "blob": pa.array([b"\x00\xff,\n", None], pa.binary()),
        "map": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
        "struct": pa.array([{"a": 1, "b": ["x"]}, None], pa.struct([("a", pa.int64()), ("b", pa.list_(pa.string()))])),
        "nan": pa.array([float("nan"), 1.0]),
    })
    back = pacsv.read_csv(io.BytesIO(written(other, "csv")), convert_options=pacsv.ConvertOptions(
        column_types={"blob": pa.string(), "map": pa.string(), "struct": pa.string()}, strings_can_be_null=True))
    assert base64.b64decode(back.column("blob")[0].as_py()) == b"\x00\xff,\n"
    assert json.loads(back.column("map")[0].as_py()) == {"k": 1}
    assert json.loads(back.column("struct")[0].as_py()) == {"a": 1, "b": ["x"]}
    assert back.column("blob")[1].as_py() is None
    rows = [json.loads(line) for line in written(other, "jsonl").splitlines()]
    assert rows[0] == {"blob": base64.b64encode(b"\x00\xff,\n").decode(), "map": {"k": 1},
                       "struct": {"a": 1, "b": ["x"]}, "nan": None}


def test_plain_rows_are_one_line_each_and_never_truncated(table):
    long = "x" * 5000
    wide = table.append_column("long", pa.array([long, None, "", None]))
    rows = plain_rows(wide)
    assert rows[0] == wide.column_names and len(rows) == wide.num_rows + 1
    lines = ["\t".join(row) for row in rows]
    assert all("\n" not in line and len(line.split("\t")) == wide.num_columns for line in lines)
    cells = dict(zip(rows[0], rows[2]))
    assert cells["plan_raw"] == EDGY_TEXT.replace("\n", "\\n").replace("\t", "\\t")
    assert _unescaped(cells["plan_raw"]) == EDGY_TEXT
    assert json.loads(_unescaped(cells["reject_reasons"])) == ["a,b", 'say "hi"\nok', "ü", None]
    first = dict(zip(rows[0], rows[1]))
    assert first["long"] == long and first["finished_at"] == "2026-01-02T03:04:05.678+00:00"
    assert all(cell == "" for cell in rows[4])  # the null row


def _unescaped(cell: str) -> str:
    return re.sub(r"\\(.)", lambda found: {"t": "\t", "n": "\n", "r": "\r"}.get(found[1], found[1]), cell)


def test_a_duckdb_interval_is_an_iso_duration_and_parquet_refuses_it_naming_it():
    result = duckdb.sql("select interval 3 day + interval 90 minute as waited, 1 as n").to_arrow_table()
    assert json.loads(written(result, "jsonl")) == {"waited": "P0M3DT5400S", "n": 1}
    assert plain_rows(result)[1] == ["P0M3DT5400S", "1"]
    with pytest.raises(ValueError, match=r"interval column\(s\) waited .*cast them in the query"):
        written(result, "parquet")


def test_an_unknown_format_is_refused_with_the_known_ones(table):
    assert FORMATS == ("csv", "jsonl", "json", "parquet")
    with pytest.raises(ValueError, match="use one of csv, jsonl, json, parquet"):
        write_table(table, "xlsx", io.BytesIO())
