"""WebDataset shard I/O: key-grouped, sorted tars written atomically, and a reader that trusts nothing.

Members are named ``<sample_id>.<field>`` (``clip.mp4``, ``meta.json``, ...). Samples are written in
sorted key order with each sample's members together, which is what ``webdataset`` and
``ray.data.read_webdataset`` need to group members correctly (ray#44068). Tars are deterministic: the same
samples give the same bytes, hence the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO

from manifests.storage import Storage

SAMPLE_ID = re.compile(r"^[a-z0-9_-]{1,160}$")
FIELD = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
# what webdataset's and Ray's decoders would unpickle (pickle.loads, torch.load): never written, refused on read
PICKLED_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"})


def check_field(field: str) -> str:
    if not FIELD.match(field):
        raise ValueError(f"field name {field!r} must match {FIELD.pattern}")
    if field.rsplit(".", 1)[-1] in PICKLED_EXTENSIONS:
        raise ValueError(f"field {field!r}: a {field.rsplit('.', 1)[-1]} member would be unpickled by webdataset "
                         "decoders; shards hold no pickled data")
    return field


class ShardError(Exception):
    """A tar that is unsafe or does not follow the shard layout."""


def check_sample_id(sample_id: str) -> str:
    if not SAMPLE_ID.match(sample_id):
        raise ValueError(f"sample_id {sample_id!r} must match [a-z0-9_-]{{1,160}}")
    return sample_id


class _HashingWriter(io.RawIOBase):
    """Forwards writes to a file while hashing and counting them, so the tar is read only once."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target, self.sha256, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


@dataclass(frozen=True)
class TarInfo:
    sha256: str
    size: int
    samples: int


@dataclass(frozen=True)
class Spilled:
    """A field's bytes kept in a local file until its shard is written. A stage that makes many large outputs from
    one input (ingest cutting a long source into clips) hands these instead of bytes (``StageContext.spill``), so
    that memory holds one output at a time, not all of them: :func:`write_shard` streams the file into the tar."""

    path: str
    size: int

    @classmethod
    def write(cls, data: bytes, folder: str) -> Spilled:
        handle, path = tempfile.mkstemp(dir=folder, suffix=".field")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return cls(path, len(data))

    def open(self) -> IO[bytes]:
        return open(self.path, "rb")

    def read(self) -> bytes:
        with self.open() as handle:
            return handle.read()

    def discard(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


FieldData = bytes | Spilled
"""A field's content as a stage hands it over: bytes, or bytes spilled to a local file."""


def field_bytes(data: FieldData) -> bytes:
    return data.read() if isinstance(data, Spilled) else data


class LazySamples(Mapping[str, Mapping[str, FieldData]]):
    """``{sample_id: fields}`` whose fields are loaded only when asked for, one sample at a time: what
    :func:`write_shard` needs to copy a shard's worth of outputs while holding one sample's."""

    def __init__(self, keys: Iterable[str], load: Callable[[str], Mapping[str, FieldData]]) -> None:
        self._keys, self._load = list(dict.fromkeys(keys)), load
        self._known = frozenset(self._keys)

    def __getitem__(self, sample_id: str) -> Mapping[str, FieldData]:
        if sample_id not in self._known:
            raise KeyError(sample_id)
        return self._load(sample_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def write_shard(storage: Storage, rel: str, samples: Mapping[str, Mapping[str, FieldData]]) -> TarInfo:
    """Atomically write ``{sample_id: {field: bytes}}`` as a key-grouped, sorted tar at ``rel``. Each sample's
    fields are asked for once, in order (``samples`` may load them then: :class:`LazySamples`), and spilled fields
    are streamed from their files.

    A sample without fields (a stage whose output is manifest columns only) has no members in the tar."""
    with_fields = 0
    with storage.atomic_writer(rel) as handle:
        hashing = _HashingWriter(handle)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for sample_id in sorted(samples):
                check_sample_id(sample_id)
                fields = samples[sample_id]
                with_fields += bool(fields)
                for field in sorted(fields):
                    check_field(field)
                    _add_member(tar, f"{sample_id}.{field}", fields[field])
    return TarInfo(sha256=hashing.sha256.hexdigest(), size=hashing.size, samples=with_fields)


def _add_member(tar: tarfile.TarFile, name: str, data: FieldData) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o444, 0
    if isinstance(data, Spilled):
        info.size = data.size
        with data.open() as handle:
            tar.addfile(info, handle)
        return
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def split_member_name(name: str) -> tuple[str, str]:
    """``"abc-c000.clip.mp4"`` -> ``("abc-c000", "clip.mp4")``, refusing anything that is not that shape."""
    if "/" in name or "\\" in name or name.startswith(".") or ".." in name:
        raise ShardError(f"unsafe tar member name {name!r}")
    key, _, field = name.partition(".")
    if not SAMPLE_ID.match(key):
        raise ShardError(f"tar member {name!r} is not <sample_id>.<field>")
    try:
        check_field(field)
    except ValueError as exc:
        raise ShardError(f"tar member {name!r}: {exc}") from None
    return key, field


class ShardReader:
    """Random access to the members of a shard tar, validated up front.

    Refuses absolute paths, ``..``, directories, links and device files, and duplicate members; reports
    whether members are grouped by key and sorted. Works on any seekable binary file (local or fsspec).
    """

    def __init__(self, handle: IO[bytes], *, name: str = "<tar>", max_member_bytes: int = 8 << 30) -> None:
        self.handle, self.name = handle, name
        self.index: dict[str, dict[str, tuple[int, int]]] = {}
        self.order: list[str] = []
        try:
            with tarfile.open(fileobj=handle, mode="r:") as tar:
                for member in tar:
                    self._add(member, max_member_bytes)
        except tarfile.TarError as exc:
            raise ShardError(f"{name}: not a readable tar ({exc})") from exc

    def _add(self, member: tarfile.TarInfo, max_member_bytes: int) -> None:
        if not member.isreg():
            raise ShardError(f"{self.name}: member {member.name!r} is not a regular file (links/devices refused)")
        key, field = split_member_name(member.name)
        if member.size > max_member_bytes:
            raise ShardError(f"{self.name}: member {member.name!r} is {member.size} bytes, over the limit")
        fields = self.index.setdefault(key, {})
        if field in fields:
            raise ShardError(f"{self.name}: duplicate member {member.name!r}")
        if not self.order or self.order[-1] != key:
            self.order.append(key)
        fields[field] = (member.offset_data, member.size)

    def close(self) -> None:
        self.handle.close()

    @property
    def keys(self) -> list[str]:
        return sorted(self.index)

    def grouping_problems(self) -> list[str]:
        """Layout problems a reader like ray.data.read_webdataset would trip over."""
        problems = []
        if len(self.order) != len(self.index):
            problems.append(f"{self.name}: members of a sample are not adjacent (not grouped by key)")
        if self.order != sorted(self.order):
            problems.append(f"{self.name}: samples are not in sorted key order")
        return problems

    def fields(self, sample_id: str) -> list[str]:
        return sorted(self.index.get(sample_id, {}))

    def read(self, sample_id: str, field: str) -> bytes:
        try:
            offset, size = self.index[sample_id][field]
        except KeyError:
            raise KeyError(f"{self.name} has no member {sample_id}.{field}") from None
        self.handle.seek(offset)
        return self.handle.read(size)

    def sample(self, sample_id: str) -> dict[str, bytes]:
        return {field: self.read(sample_id, field) for field in self.fields(sample_id)}


def open_shard(storage: Storage, rel: str) -> ShardReader:
    return ShardReader(storage.open(rel), name=rel)


def sha256_of(storage: Storage, rel: str, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with storage.open(rel) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
