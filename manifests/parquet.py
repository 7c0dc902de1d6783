"""Reading a run's Parquet files (manifests, sources, labels) wherever the run folder lives."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.storage import Storage


def read_parquet(storage: Storage, rel: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The table in ``rel``; run files are small, and every caller reads them whole."""
    return parquet_from_bytes(storage.read_bytes(rel), columns)


def parquet_from_bytes(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """Parse a Parquet file from a copy of ``data`` in Arrow's memory (``arrow_owned``)."""
    return pq.read_table(pa.BufferReader(arrow_owned(data)), columns=list(columns) if columns else None)


def arrow_owned(data: bytes) -> pa.Buffer:
    """A copy of ``data`` in Arrow's own memory, for Arrow's readers to parse. Arrow releases a read's buffers on
    its own threads, some after the read has returned; a buffer that wraps a Python object (``bytes``, a file
    object) needs the GIL to be released, and if Python is shutting down by then the process aborts after its
    work is done ("terminate called without an active exception", exit 134: seen here in 1 of 20-40 `ffp
    verify` runs on a loaded machine; apache/arrow#34314). Arrow's own memory needs no GIL."""
    sink = pa.BufferOutputStream()
    sink.write(data)
    return sink.getvalue()
