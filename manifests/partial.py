"""Per-item results of a shard still in progress (``stages/<stage>/_partial/shard-N/``).

For each input item (a sample, or a source for a root stage) the worker first bumps an attempt counter,
then processes it, then writes the item's files (a small tar) and finally its rows (JSON, the item's commit
marker). A killed worker loses at most the items in flight; on the retry, finished items are reused and an
item whose counter reached the limit without a result (it killed the worker every time) is quarantined.

Each attempt also records the shard try that began it (``ShardTask.try_id``). When a try's worker is killed for
memory, the driver notes that try (:func:`note_oom_death`) and the next try blames exactly the items that try had in
flight (:meth:`PartialStore.apply_oom_deaths`); memory errors raised in ``process`` are counted the same way
(:meth:`PartialStore.note_oom`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from manifests.layout import partial_dir
from manifests.manifest import Status
from manifests.shards import FieldData, LazySamples, ShardReader, write_shard
from manifests.storage import Storage, StorageFull

SHARD_TIMEOUT = "shard-timeout.json"
OOM_DEATHS = "oom-deaths.json"


class PartialStore:
    """Results of one shard in progress, valid only for one stage fingerprint.

    Results made with another fingerprint (the stage's params changed while a shard was interrupted) are
    deleted on open, so old and new outputs are never mixed.
    """

    def __init__(
        self, storage: Storage, stage: str, shard: int, fingerprint: str, try_id: str | None = None
    ) -> None:
        """``try_id``: the shard try this store is opened by; each attempt it begins records it."""
        self.storage, self.dir, self.try_id = storage, partial_dir(stage, shard), try_id
        marker = f"{self.dir}/FINGERPRINT"
        if storage.exists(self.dir) and (not storage.exists(marker) or storage.read_bytes(marker).decode() != fingerprint):
            storage.remove(self.dir, recursive=True)
        if not storage.exists(marker):
            storage.write_bytes(marker, fingerprint.encode())

    def _rel(self, key: str, suffix: str) -> str:
        return f"{self.dir}/{key}.{suffix}"

    def attempts(self, key: str) -> int:
        rel = self._rel(key, "attempts.json")
        return int(json.loads(self.storage.read_bytes(rel))["attempts"]) if self.storage.exists(rel) else 0

    def begin(self, key: str, worker: str | None = None) -> int:
        """Record one more attempt at ``key`` (by ``worker``, "host:pid", in this store's try) before running it;
        returns the attempt number (1-based)."""
        attempt = self.attempts(key) + 1
        self.set_attempts(key, attempt, worker, self.try_id)
        return attempt

    def set_attempts(self, key: str, attempts: int, worker: str | None = None, try_id: str | None = None) -> None:
        record = {"attempts": attempts, "worker": worker, "try": try_id}
        # not flushed to disk: after a power loss a counter one short costs at most one more try
        self.storage.write_bytes(self._rel(key, "attempts.json"), json.dumps(record).encode(), durable=False)

    def forget_attempt(self, key: str, attempt: int) -> None:
        """Take back attempt number ``attempt`` at ``key``: it ended for a reason that is not the item's (a full
        disk). Best effort, since the disk may still be full: removing the counter needs no space, and an
        item is better retried once too often than quarantined for what the storage did."""
        rel = self._rel(key, "attempts.json")
        if attempt <= 1:
            self.storage.remove(rel)
            return
        try:
            self.set_attempts(key, attempt - 1)
        except StorageFull:
            self.storage.remove(rel)

    def note_timeout(self, key: str, seconds: float) -> None:
        """Record that an attempt at ``key`` ran past its time limit (written just before the actor exits)."""
        self.storage.write_bytes(self._rel(key, "timeout.json"), json.dumps({"seconds": seconds}).encode())

    def timed_out(self, key: str) -> str | None:
        """Which time limit an attempt at ``key`` (or the shard try it was in) ran past, if one did."""
        rel = self._rel(key, "timeout.json")
        if self.storage.exists(rel):
            return f"timeouts.sample_s ({json.loads(self.storage.read_bytes(rel))['seconds']:g} s)"
        shard = f"{self.dir}/{SHARD_TIMEOUT}"
        if self.storage.exists(shard):
            return f"timeouts.shard_s ({json.loads(self.storage.read_bytes(shard))['seconds']:g} s)"
        return None

    def note_oom(self, key: str, event: str, kind: str, error: str = "") -> int:
        """Record that ``key`` ran out of memory on ``event`` (an attempt, or a try whose worker was killed: the same
        event recorded twice counts once), of ``kind`` ``raised`` or ``killed``; returns how many times it has."""
        events = self.ooms(key)
        events[event] = {"kind": kind, "error": error}
        self.storage.write_bytes(self._rel(key, "oom.json"), json.dumps(events).encode())
        return len(events)

    def ooms(self, key: str) -> dict[str, dict[str, str]]:
        """Each time ``key`` ran out of memory (:meth:`note_oom`), in order."""
        rel = self._rel(key, "oom.json")
        return dict(json.loads(self.storage.read_bytes(rel))) if self.storage.exists(rel) else {}

    def apply_oom_deaths(self) -> list[str]:
        """Blame each try whose worker was killed for memory (:func:`note_oom_death`) on the items it had in flight:
        begun by that try (their latest attempt), no result saved. Returns those items. Idempotent, so a try that
        dies while doing this loses nothing; it must run before the try begins any item."""
        rel = f"{self.dir}/{OOM_DEATHS}"
        deaths = json.loads(self.storage.read_bytes(rel)) if self.storage.exists(rel) else {}
        if not deaths:
            return []
        blamed = []
        for path in self.storage.list(self.dir, pattern="*.attempts.json"):
            key = path.rsplit("/", 1)[-1].removesuffix(".attempts.json")
            try_id = json.loads(self.storage.read_bytes(path)).get("try")
            if try_id in deaths and not self.storage.exists(self._rel(key, "rows.json")):
                self.note_oom(key, f"try {try_id}", "killed", deaths[try_id])
                blamed.append(key)
        return blamed

    def save(self, key: str, rows: list[dict[str, Any]], files: Mapping[str, Mapping[str, FieldData]]) -> None:
        """The result of item ``key``: its files (a tar, streamed sample by sample), then its rows (the marker)."""
        if len(files):
            write_shard(self.storage, self._rel(key, "files.tar"), files)
        self.storage.write_bytes(self._rel(key, "rows.json"), json.dumps(rows, default=str).encode())

    def load(self, key: str) -> list[dict[str, Any]] | None:
        """The rows of item ``key``'s saved result (its files: :meth:`files`), or None when it has none."""
        rows_rel = self._rel(key, "rows.json")
        if not self.storage.exists(rows_rel):
            return None
        return list(json.loads(self.storage.read_bytes(rows_rel)))

    @contextmanager
    def files(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[LazySamples]:
        """The saved files of the ok ``rows`` (of saved items), read from their items' tars one sample at a time
        when asked for, as a commit writes them: a shard of any size is copied holding one sample's files."""
        owners = {row["sample_id"]: row["input_id"] for row in rows if row["status"] == Status.OK}
        reader = _ItemReader(self)
        try:
            yield LazySamples(owners, lambda sample_id: reader.sample(owners[sample_id], sample_id))
        finally:
            reader.close()

    def clear(self) -> None:
        self.storage.remove(self.dir, recursive=True)
        parent = self.dir.rsplit("/", 1)[0]
        if self.storage.exists(parent) and not self.storage.walk_files(parent):
            self.storage.remove(parent, recursive=True)


class _ItemReader:
    """One item's ``files.tar`` open at a time (the samples of an item come together in a commit's sorted order)."""

    def __init__(self, store: PartialStore) -> None:
        self.store, self.key = store, ""
        self.reader: ShardReader | None = None

    def sample(self, key: str, sample_id: str) -> dict[str, bytes]:
        if key != self.key:
            self.close()
            rel = self.store._rel(key, "files.tar")
            self.key = key
            storage = self.store.storage
            self.reader = ShardReader(storage.open(rel), name=rel) if storage.exists(rel) else None
        if self.reader is None or sample_id not in self.reader.index:
            return {}
        return self.reader.sample(sample_id)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.key, self.reader = "", None


def note_shard_timeout(storage: Storage, stage: str, shard: int, seconds: float) -> None:
    """Record, for the next try, that the driver ended a try at this shard for running past its time limit."""
    storage.write_bytes(f"{partial_dir(stage, shard)}/{SHARD_TIMEOUT}", json.dumps({"seconds": seconds}).encode())


def note_oom_death(storage: Storage, stage: str, shard: int, try_id: str, error: str) -> None:
    """Record, for the next try, that the worker of try ``try_id`` at this shard was killed for memory (``error``:
    the evidence). Written by the driver only."""
    rel = f"{partial_dir(stage, shard)}/{OOM_DEATHS}"
    deaths = json.loads(storage.read_bytes(rel)) if storage.exists(rel) else {}
    deaths[try_id] = error
    storage.write_bytes(rel, json.dumps(deaths).encode())


def finished_items(storage: Storage, stage: str, shard: int) -> int:
    """How many items of a shard in progress have their result saved (one listing of its ``_partial/``)."""
    return len(storage.list(partial_dir(stage, shard), pattern="*.rows.json"))
