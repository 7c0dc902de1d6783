"""Human review decisions: an append-only log of labels in the run folder, ``labels/*.parquet``.

A label says that a reviewer accepted or rejected one judged pair: ``(stage, sample_id)`` names the pair by the
judge stage that scored it, ``shard`` is that sample's shard (so a plan can tell which export shards a
label touches without opening any manifest). Each save writes a new file and never rewrites one, so two
reviewers (or a reviewer and a running export) can never lose each other's decisions, on a local disk or
on object storage alike. The latest label of a pair wins; older ones stay as history.

Export honours labels over the judge's verdict; ``ffp query`` sees them as the views ``labels`` (the current
decision per pair) and ``label_history`` (every decision).
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.layout import LABELS_DIR, label_file
from manifests.parquet import read_parquet
from manifests.storage import Storage

LABEL_SCHEMA = pa.schema([
    pa.field("stage", pa.string()),
    pa.field("sample_id", pa.string()),
    pa.field("shard", pa.int32()),
    pa.field("decision", pa.string()),
    pa.field("reviewer", pa.string()),
    pa.field("at", pa.timestamp("ms", tz="UTC")),
    pa.field("note", pa.string()),
])


class Decision(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True)
class Label:
    stage: str
    sample_id: str
    shard: int
    decision: Decision
    reviewer: str
    at: datetime
    note: str = ""

    def as_row(self) -> dict[str, object]:
        return {"stage": self.stage, "sample_id": self.sample_id, "shard": self.shard, "decision": str(self.decision),
                "reviewer": self.reviewer, "at": self.at, "note": self.note}


class LabelError(ValueError):
    """A label file or a label that cannot be used; the message names it."""


def new_label(stage: str, sample_id: str, shard: int, decision: str, reviewer: str, note: str = "") -> Label:
    """A label stamped now, checked: a known decision, a non-empty reviewer, bounded text."""
    try:
        checked = Decision(decision)
    except ValueError:
        raise LabelError(f"decision must be one of {[d.value for d in Decision]}, got {decision!r}") from None
    if not reviewer.strip() or len(reviewer) > 200:
        raise LabelError("reviewer must be a non-empty name of at most 200 characters")
    if len(note) > 4000:
        raise LabelError(f"note is {len(note)} characters; at most 4000")
    return Label(stage, sample_id, int(shard), checked, reviewer.strip(), datetime.now(timezone.utc), note)


def save_labels(run: Storage, labels: Iterable[Label]) -> str:
    """Append labels as one new file (atomic); returns its path in the run folder."""
    rows = [label.as_row() for label in labels]
    if not rows:
        raise LabelError("no labels to save")
    table = pa.Table.from_pylist(rows, schema=LABEL_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    # time first, so file order is save order; the random part keeps concurrent savers apart
    rel = label_file(f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}")
    run.write_bytes(rel, buffer.getvalue())
    return rel


def label_files(run: Storage) -> list[str]:
    return run.list(LABELS_DIR, pattern="labels-*.parquet")


def read_label_history(run: Storage) -> pa.Table:
    """Every label ever saved, in save order."""
    tables = []
    for rel in label_files(run):
        table = read_parquet(run, rel)
        missing = set(LABEL_SCHEMA.names) - set(table.column_names)
        if missing:
            raise LabelError(f"{rel}: not a label file (missing columns {sorted(missing)})")
        tables.append(table.select(LABEL_SCHEMA.names).cast(LABEL_SCHEMA))
    return pa.concat_tables(tables) if tables else LABEL_SCHEMA.empty_table()


def current_labels(run: Storage) -> dict[tuple[str, str], Label]:
    """The latest label of each (stage, sample_id); rows with an unknown decision are ignored."""
    current: dict[tuple[str, str], Label] = {}
    for row in read_label_history(run).to_pylist():
        if row["decision"] not in Decision._value2member_map_ or not row["stage"] or not row["sample_id"]:
            continue
        label = Label(row["stage"], row["sample_id"], int(row["shard"] or 0), Decision(row["decision"]),
                      row["reviewer"] or "", row["at"], row["note"] or "")
        current[(label.stage, label.sample_id)] = label
    return current


def labels_per_shard(labels: Mapping[tuple[str, str], Label]) -> dict[tuple[str, int], dict[tuple[str, str], Label]]:
    """``labels`` grouped by (stage, shard): :func:`labels_digest` of one shard then reads only its own labels."""
    grouped: dict[tuple[str, int], dict[tuple[str, str], Label]] = {}
    for key, label in labels.items():
        grouped.setdefault((label.stage, label.shard), {})[key] = label
    return grouped


def labels_digest(labels: Mapping[tuple[str, str], Label], stage: str, shard: int) -> str:
    """A digest of the current labels of one (judge stage, shard): it changes when a decision there does."""
    parts = sorted(f"{sid}={label.decision}" for (st, sid), label in labels.items() if st == stage and label.shard == shard)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
