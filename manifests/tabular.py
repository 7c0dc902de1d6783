"""Query results (Arrow tables) written as CSV, JSON lines, JSON or Parquet, and as plain text cells.

Each text format says every value the same way, so that what one writes another tool reads back:

- lists, structs and maps: JSON text (in a CSV or plain cell; nested as they are in JSON and JSON lines), maps as
  JSON objects;
- timestamps, dates and times: ISO 8601 with the digits of the column's unit (``2026-05-01T12:00:00.250+00:00`` for
  milliseconds; no offset for a naive time);
- binary: base64 (standard alphabet, padded);
- floats that are not finite (NaN, infinity): null in JSON and JSON lines (JSON has no such number), as Arrow writes
  them (``nan``, ``inf``) in CSV and plain cells; decimals: JSON numbers; durations: seconds; DuckDB's intervals:
  ISO 8601 durations (``P0M3DT0S``);
- null: an empty unquoted CSV field (an empty string is ``""``), JSON ``null``, an empty plain cell.

Parquet keeps every type as it is, and refuses an interval column (Parquet has no such type) naming it.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math
from collections.abc import Callable
from typing import Any, BinaryIO

import pyarrow as pa

FORMATS = ("csv", "jsonl", "json", "parquet")
"""What :func:`write_table` writes."""


def write_table(table: pa.Table, fmt: str, out: BinaryIO) -> None:
    """``table`` in ``fmt`` (one of :data:`FORMATS`) to ``out``, which needs no seeking (a pipe will do)."""
    writers: dict[str, Callable[[pa.Table, BinaryIO], None]] = {
        "csv": _write_csv, "jsonl": _write_jsonl, "json": _write_json, "parquet": _write_parquet,
    }
    if fmt not in writers:
        raise ValueError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    writers[fmt](table, out)


def plain_rows(table: pa.Table) -> list[list[str]]:
    """The column names, then every row, as text cells to print one row a line, tab-separated (nothing truncated).
    A cell never holds a tab or a line break: backslash, tab, newline and carriage return are written ``\\\\``,
    ``\\t``, ``\\n``, ``\\r`` (as PostgreSQL's and MySQL's text output do); null is an empty cell."""
    columns = [[_escaped(cell) for cell in _cells(table.column(i))] for i in range(table.num_columns)]
    return [[_escaped(name) for name in table.column_names], *map(list, zip(*columns))] if columns else [[]]


# The formats ----------------------------------------------------------------------------------------------------
def _write_csv(table: pa.Table, out: BinaryIO) -> None:
    import pyarrow.csv as pacsv

    arrays = [_csv_column(table.column(i)) for i in range(table.num_columns)]
    pacsv.write_csv(pa.table(arrays, names=table.column_names), out)


def _write_jsonl(table: pa.Table, out: BinaryIO) -> None:
    for row in _json_rows(table):
        out.write(json.dumps(row, ensure_ascii=False, allow_nan=False).encode() + b"\n")


def _write_json(table: pa.Table, out: BinaryIO) -> None:
    out.write(json.dumps(_json_rows(table), ensure_ascii=False, allow_nan=False, indent=1).encode() + b"\n")


def _write_parquet(table: pa.Table, out: BinaryIO) -> None:
    import pyarrow.parquet as pq

    unfit = [f"{f.name} ({f.type})" for f in table.schema if pa.types.is_interval(f.type)]
    if unfit:
        raise ValueError(f"Parquet cannot hold the interval column(s) {', '.join(unfit)}: cast them in the query "
                         "(epoch(x) for seconds, x::varchar for text), or write another format")
    buffer = io.BytesIO()  # Arrow asks a Python file where it is (tell), which a pipe cannot answer
    pq.write_table(table, buffer, compression="zstd")
    out.write(buffer.getvalue())


# Values -----------------------------------------------------------------------------------------------------
ARROW_CSV_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
                   pa.types.is_large_string, pa.types.is_decimal, pa.types.is_null)
"""Column types Arrow's CSV writer writes as they are; any other column is written as text cells first."""


def _csv_column(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if any(check(column.type) for check in ARROW_CSV_TYPES):
        return column
    return pa.array(_cells(column), pa.string())


def _cells(column: pa.ChunkedArray) -> list[str | None]:
    """Each value as the text a CSV or plain cell holds (see the module's docstring), None for null: numbers and
    booleans as Arrow's CSV writer spells them, other values from Python's."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_null(column.type):
        return [None] * len(column)
    if any(check(column.type) for check in ARROW_CSV_TYPES):
        return column.cast(pa.string()).to_pylist()
    return [None if value is None else _text(value) for value in _values(column)]


def _text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False)
    found = _jsonable(value)
    return found if isinstance(found, str) else str(found)


def _json_rows(table: pa.Table) -> list[dict[str, Any]]:
    columns = [[_jsonable(value) for value in _values(table.column(i))] for i in range(table.num_columns)]
    if not columns:
        return [{} for _ in range(table.num_rows)]
    return [dict(zip(table.column_names, row)) for row in zip(*columns)]


ISO_TIMESPEC = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}
"""A timestamp column's values are written with the digits of its unit (what Arrow's ISO 8601 parsers expect)."""


def _values(column: pa.ChunkedArray) -> list[Any]:
    """Python values of ``column``, a timestamp column's as ISO 8601 text with the digits of its unit."""
    values = column.to_pylist(maps_as_pydicts="lossy")
    if pa.types.is_timestamp(column.type) and column.type.unit in ISO_TIMESPEC:
        spec = ISO_TIMESPEC[column.type.unit]
        return [None if value is None else value.isoformat(timespec=spec) for value in values]
    return values


def _jsonable(value: Any) -> Any:
    """``value`` (as Arrow's ``to_pylist`` gives it) with only what JSON holds (see the module's docstring)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, pa.MonthDayNano):  # a tuple: before lists
        return f"P{value.months}M{value.days}DT{_seconds(value.nanoseconds)}S"
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)


def _seconds(nanoseconds: int) -> str:
    """Exact seconds of ``nanoseconds`` (``5400``, ``-0.25``), as an ISO 8601 duration writes them."""
    whole, part = divmod(abs(nanoseconds), 1_000_000_000)
    sign = "-" if nanoseconds < 0 else ""
    return f"{sign}{whole}" + (f".{part:09d}".rstrip("0") if part else "")


def _escaped(cell: str | None) -> str:
    if cell is None:
        return ""
    return cell.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
