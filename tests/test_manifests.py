"""Shard tars, manifests and the commit protocol (DESIGN §2-§3), with no Ray.

Malicious tars are built with ``tarfile`` and must be refused by ``ShardReader``; ``verify_run`` must find
every kind of damage a real run folder can suffer; a worker stopped mid-shard must lose at most the sample in
flight.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests.layout import partial_dir
from manifests.manifest import META_KEY, Status, commit_shard, manifest_path, read_commit
from manifests.shards import ShardError, ShardReader, open_shard, write_shard
from manifests.storage import TEMP_MARKER, Storage
from manifests.verify import verify_run
from pipeline.worker import WORKER
from tests.conftest import LocalRun, by_id, manifest_rows, run_local, synth_config

SAMPLES = {
    "b-c001": {"meta.json": b'{"b": 1}', "clip.mp4": b"B" * 700},
    "a-c000": {"meta.json": b'{"a": 1}', "clip.mp4": b"A" * 1500, "frame0.png": b"png"},
    "c-c000": {"clip.mp4": b"C"},
}


def member_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


# Writing shards ------------------------------------------------------------------------------------------------


def test_tar_is_key_grouped_sorted_and_readable_by_tarfile(tmp_path):
    storage = Storage(str(tmp_path))
    info = write_shard(storage, "stages/x/shard-000000.tar", SAMPLES)
    path = tmp_path / "stages/x/shard-000000.tar"
    assert member_names(path) == [
        "a-c000.clip.mp4", "a-c000.frame0.png", "a-c000.meta.json",
        "b-c001.clip.mp4", "b-c001.meta.json",
        "c-c000.clip.mp4",
    ]
    with tarfile.open(path) as tar:
        assert tar.extractfile("a-c000.clip.mp4").read() == b"A" * 1500
    data = path.read_bytes()
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.size == len(data)
    assert info.samples == 3
    assert not [p for p in path.parent.iterdir() if TEMP_MARKER in p.name]


def test_tar_bytes_are_deterministic(tmp_path):
    storage = Storage(str(tmp_path))
    reordered = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(SAMPLES.items()))}
    first = write_shard(storage, "one.tar", SAMPLES)
    second = write_shard(storage, "two.tar", reordered)
    assert first.sha256 == second.sha256
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    with tarfile.open(tmp_path / "one.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


@pytest.mark.parametrize(
    "samples",
    [
        {"Upper-Case": {"json": b"{}"}},
        {"../escape": {"json": b"{}"}},
        {"a b": {"json": b"{}"}},
        {"ok": {"../x": b""}},
        {"ok": {"UPPER.json": b""}},
    ],
    ids=["uppercase-id", "dotdot-id", "space-id", "dotdot-field", "uppercase-field"],
)
def test_write_shard_refuses_bad_keys_and_leaves_nothing(tmp_path, samples):
    storage = Storage(str(tmp_path))
    with pytest.raises(ValueError):
        write_shard(storage, "bad.tar", samples)
    assert list(tmp_path.iterdir()) == []  # neither the tar nor its temporary


def test_commit_writes_tar_then_manifest_with_its_sha_size_and_count(tmp_path):
    storage = Storage(str(tmp_path))
    rows = [
        {"sample_id": "b-c001", "input_id": "b", "shard": 7, "stage": "ingest", "status": "ok", "attempts": 1},
        {"sample_id": "a-c000", "input_id": "a", "shard": 7, "stage": "ingest", "status": "ok", "attempts": 1},
        {"sample_id": "c-c000", "input_id": "c", "shard": 7, "stage": "ingest", "status": "ok", "attempts": 1},
        {"sample_id": "d", "input_id": "d", "shard": 7, "stage": "ingest", "status": "failed", "reason": "bad",
         "attempts": 2},
    ]
    import pyarrow as pa

    info = commit_shard(
        storage, stage="ingest", shard=7, tar_path="stages/ingest/shard-000007.tar", samples=SAMPLES, rows=rows,
        stage_columns={"width": pa.int16()}, fingerprint="f" * 16, inputs_digest="i" * 16,
    )
    tar = tmp_path / "stages/ingest/shard-000007.tar"
    manifest = tmp_path / manifest_path("ingest", 7)
    assert manifest == tmp_path / "manifests/ingest/shard-000007.parquet"
    assert manifest.stat().st_mtime_ns >= tar.stat().st_mtime_ns
    # the commit information is in the Parquet footer, readable with plain pyarrow
    meta = json.loads(pq.read_schema(manifest).metadata[META_KEY])
    assert meta["tar_sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest() == info.tar_sha256
    assert meta["tar_bytes"] == tar.stat().st_size
    assert meta["tar_samples"] == 3
    assert meta["rows"] == 4
    assert meta["counts"] == {"ok": 3, "failed": 1}
    assert meta["tar_path"] == "stages/ingest/shard-000007.tar"
    assert meta["fingerprint"] == "f" * 16
    assert read_commit(storage, manifest_path("ingest", 7)) == info
    table = pq.read_table(manifest)
    assert table.column("sample_id").to_pylist() == ["a-c000", "b-c001", "c-c000", "d"]
    assert table.schema.field("width").type == pa.int16()
    assert by_id(table.to_pylist())["d"]["reason"] == "bad"


def test_commit_refuses_duplicate_rows_and_files_without_rows(tmp_path):
    storage = Storage(str(tmp_path))
    row = {"sample_id": "a-c000", "input_id": "a", "shard": 0, "stage": "s", "status": "ok"}
    common = dict(stage="s", shard=0, tar_path="s.tar", stage_columns={}, fingerprint="f", inputs_digest="i")
    with pytest.raises(ValueError, match="duplicate"):
        commit_shard(storage, samples={"a-c000": {"json": b"{}"}}, rows=[row, row], **common)
    with pytest.raises(ValueError, match="without a manifest row"):
        commit_shard(storage, samples=SAMPLES, rows=[row], **common)
    assert not (tmp_path / "manifests").exists()


# Reading shards that do not deserve trust ---------------------------------------------------------------------


def _evil_tar(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            data = b"x" * member.size if member.isreg() else None
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _reg(name: str, size: int = 3) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


EVIL = {
    "absolute path": [_reg("/etc/a-c000.json")],
    "dotdot": [_reg("../a-c000.json")],
    "dotdot inside": [_reg("a/../a-c000.json")],
    "subfolder": [_reg("sub/a-c000.json")],
    "symlink": [_special("a-c000.json", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": [_reg("a-c000.json"), _special("b-c000.json", tarfile.LNKTYPE, "a-c000.json")],
    "char device": [_special("a-c000.json", tarfile.CHRTYPE)],
    "block device": [_special("a-c000.json", tarfile.BLKTYPE)],
    "fifo": [_special("a-c000.json", tarfile.FIFOTYPE)],
    "directory": [_special("a-c000", tarfile.DIRTYPE)],
    "duplicate member": [_reg("a-c000.json"), _reg("b-c000.json"), _reg("a-c000.json")],
    "hidden file": [_reg(".a-c000.json")],
    "not sample.field": [_reg("noextension")],
    # members webdataset's default decoders would unpickle (pickle.loads / torch.load): code execution on read
    "pickle member": [_reg("a-c000.pickle")],
    "pyd member": [_reg("a-c000.meta.pyd")],
    "torch member": [_reg("a-c000.weights.pth")],
}


@pytest.mark.parametrize("case", list(EVIL))
def test_reader_refuses_unsafe_members(tmp_path, case):
    path = _evil_tar(tmp_path / "evil.tar", *EVIL[case])
    with open(path, "rb") as handle, pytest.raises(ShardError):
        ShardReader(handle, name="evil.tar")


@pytest.mark.parametrize("field", ["state.pyd", "x.pickle", "model.pt"])
def test_writer_never_writes_a_member_decoders_would_unpickle(tmp_path, field):
    with pytest.raises(ValueError, match="unpickled"):
        write_shard(Storage(str(tmp_path)), "x.tar", {"a-c000": {field: b"\x80\x04N."}})
    assert not list(tmp_path.iterdir()), "nothing may be left behind"


def test_reader_refuses_members_over_the_size_limit(tmp_path):
    path = _evil_tar(tmp_path / "big.tar", _reg("a-c000.json", size=4096))
    with open(path, "rb") as handle, pytest.raises(ShardError, match="over the limit"):
        ShardReader(handle, name="big.tar", max_member_bytes=1024)


def test_reader_refuses_a_file_that_is_not_a_tar(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"\x00garbage" * 200)
    with open(tmp_path / "x.tar", "rb") as handle, pytest.raises(ShardError, match="x.tar"):
        ShardReader(handle, name="x.tar")


def test_reader_reads_a_good_shard_and_flags_bad_layout(tmp_path):
    storage = Storage(str(tmp_path))
    write_shard(storage, "good.tar", SAMPLES)
    reader = open_shard(storage, "good.tar")
    assert reader.keys == ["a-c000", "b-c001", "c-c000"]
    assert reader.fields("a-c000") == ["clip.mp4", "frame0.png", "meta.json"]
    assert reader.sample("b-c001") == SAMPLES["b-c001"]
    assert reader.grouping_problems() == []
    with pytest.raises(KeyError):
        reader.read("a-c000", "nope.json")

    interleaved = _evil_tar(tmp_path / "interleaved.tar", _reg("a-c000.json"), _reg("b-c000.json"), _reg("a-c000.png"))
    with open(interleaved, "rb") as handle:
        assert any("not grouped" in p for p in ShardReader(handle).grouping_problems())
    unsorted = _evil_tar(tmp_path / "unsorted.tar", _reg("b-c000.json"), _reg("a-c000.json"))
    with open(unsorted, "rb") as handle:
        assert any("sorted" in p for p in ShardReader(handle).grouping_problems())


# verify_run on a real (small) run folder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, demo_vos) -> Path:
    """ingest -> augment -> export on the demo sequences, run through ShardWorker (no Ray)."""
    run_dir = tmp_path_factory.mktemp("verify") / "run"
    run_local(synth_config(run_dir, demo_vos), finalize=True)
    return run_dir


@pytest.fixture
def run_copy(good_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(good_run, target)
    return target


def test_verify_is_clean_on_a_good_run(good_run):
    report = verify_run(Storage(str(good_run)))
    assert report.ok, report.problems
    assert report.problems == [] and report.warnings == []
    assert report.shards == 6  # 3 stages x 2 shards
    assert report.samples == sum(len(manifest_rows(good_run, s)) for s in ("ingest", "augment", "export"))


def test_verify_finds_a_flipped_byte(run_copy):
    tar = run_copy / "stages/ingest/shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0x01  # inside the first member's data: the tar still parses
    tar.write_bytes(bytes(data))
    report = verify_run(Storage(str(run_copy)))
    assert not report.ok
    assert [p for p in report.problems if "stages/ingest/shard-000001.tar" in p and "sha256" in p]
    assert len(report.problems) == 1, report.problems


def test_verify_finds_a_truncated_tar(run_copy):
    tar = run_copy / "export/shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[:-2048])
    problems = verify_run(Storage(str(run_copy))).problems
    assert any("export/shard-000000.tar" in p and "size" in p for p in problems), problems


def test_verify_finds_a_missing_tar(run_copy):
    (run_copy / "stages/augment/shard-000000.tar").unlink()
    problems = verify_run(Storage(str(run_copy))).problems
    assert problems == ["manifests/augment/shard-000000.parquet: its tar stages/augment/shard-000000.tar is missing"]


def test_verify_finds_a_tar_without_manifest(run_copy):
    shutil.copy(run_copy / "stages/ingest/shard-000000.tar", run_copy / "stages/ingest/shard-000042.tar")
    (run_copy / manifest_path("augment", 1)).unlink()
    problems = verify_run(Storage(str(run_copy))).problems
    assert any("stages/ingest/shard-000042.tar" in p and "without a manifest" in p for p in problems), problems
    assert any("stages/augment/shard-000001.tar" in p and "without a manifest" in p for p in problems), problems


def test_verify_finds_orphan_temporaries_and_partial_leftovers(run_copy):
    (run_copy / f"stages/ingest/shard-000000.tar{TEMP_MARKER}0123456789ab").write_bytes(b"half a tar")
    (run_copy / f"manifests/export/shard-000001.parquet{TEMP_MARKER}ba9876543210").write_bytes(b"")
    leftover = run_copy / partial_dir("augment", 1)
    leftover.mkdir(parents=True)
    (leftover / "x-c000.rows.json").write_text("[]")
    report = verify_run(Storage(str(run_copy)))
    orphans = [p for p in report.problems if "orphan temporary" in p]
    assert len(orphans) == 2, report.problems
    assert any("stages/augment/_partial/shard-000001/x-c000.rows.json" in w for w in report.warnings)


def test_verify_finds_a_sample_committed_twice(run_copy):
    shutil.copy(run_copy / manifest_path("ingest", 0), run_copy / manifest_path("ingest", 7))
    problems = verify_run(Storage(str(run_copy))).problems
    assert any("stage ingest" in p and "more than one row" in p for p in problems), problems


def test_verify_finds_a_manifest_whose_rows_do_not_match_the_tar(run_copy):
    """A tar swapped for another valid shard of the same stage: sha, size and keys all disagree."""
    shutil.copy(run_copy / "stages/ingest/shard-000001.tar", run_copy / "stages/ingest/shard-000000.tar")
    problems = verify_run(Storage(str(run_copy))).problems
    joined = "\n".join(problems)
    assert "stages/ingest/shard-000000.tar" in joined
    assert "samples that are not ok rows" in joined and "sha256" in joined


# _partial/: a worker stopped mid-shard loses at most the sample in flight ------------------------------------


class Killed(BaseException):
    """Stands for the worker process dying (not an ``Exception``: nothing in the worker may catch it)."""


def _stop_after(worker, n_calls: int, seen: list[str]) -> None:
    """Make the worker's stage die on its ``n_calls``-th process() call, recording what it was asked."""
    original = worker.stage.process
    calls = {"n": 0}

    def process(samples):
        calls["n"] += 1
        seen.extend(s.sample_id for s in samples)
        if calls["n"] == n_calls:
            raise Killed
        return original(samples)

    worker.stage.process = process


def test_partial_results_of_a_killed_worker_are_reused(tmp_path, demo_vos):
    config = synth_config(tmp_path / "run", demo_vos)
    first = LocalRun(config)
    sources = [row["source_id"] for row in first.plan.source_rows["ingest"][0]]
    assert len(sources) == 4
    seen: list[str] = []
    _stop_after(first.worker("ingest"), 3, seen)
    with pytest.raises(Killed):
        first.run_shard("ingest", 0)
    assert seen == sources[:3]
    partial = tmp_path / "run" / partial_dir("ingest", 0)
    assert not (tmp_path / "run" / manifest_path("ingest", 0)).exists()  # not committed
    assert sorted(p.name for p in partial.glob("*.rows.json")) == [f"{s}.rows.json" for s in sources[:2]]
    saved = {}
    for source in sources[:2]:
        with tarfile.open(partial / f"{source}.files.tar") as tar:
            saved.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    record = json.loads((partial / f"{sources[2]}.attempts.json").read_text())
    assert (record["attempts"], record["worker"]) == (1, WORKER)
    assert record["try"]  # the try that began it: what an out-of-memory death is attributed by

    second = LocalRun(config)  # a new actor
    seen = []
    _stop_after(second.worker("ingest"), 0, seen)  # never dies, just records
    summary = second.run_shard("ingest", 0)
    assert seen == sources[2:]  # the finished samples were not processed again
    assert (summary.reused, summary.processed) == (2, 2)
    assert not partial.exists()  # cleared once committed
    with tarfile.open(tmp_path / "run/stages/ingest/shard-000000.tar") as tar:
        committed = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert {k: committed[k] for k in saved} == saved  # reused bytes, not recomputed ones
    rows = by_id(manifest_rows(tmp_path / "run", "ingest"))
    assert {r["status"] for r in rows.values()} == {"ok"} and len(rows) == 4
    assert rows[f"{sources[2]}-c000"]["attempts"] == 2  # the try that killed the worker counts
    assert rows[f"{sources[0]}-c000"]["attempts"] == 1
    assert verify_run(Storage(str(tmp_path / "run"))).ok


def test_a_sample_that_kills_the_worker_every_time_is_quarantined(tmp_path, demo_vos):
    config = synth_config(tmp_path / "run", demo_vos, max_attempts=3)
    poison = sorted(row["source_id"] for row in LocalRun(config).plan.source_rows["ingest"][0])[1]
    for _ in range(3):
        runner = LocalRun(config)
        original = runner.worker("ingest").stage.process

        def process(samples, original=original):
            if any(s.sample_id == poison for s in samples):
                raise Killed
            return original(samples)

        runner.worker("ingest").stage.process = process
        with pytest.raises(Killed):
            runner.run_shard("ingest", 0)
    summary = LocalRun(config).run_shard("ingest", 0)
    assert summary.counts == {"ok": 3, "quarantined": 1}
    rows = by_id(manifest_rows(tmp_path / "run", "ingest"))
    assert rows[poison]["status"] == Status.QUARANTINED
    assert rows[poison]["attempts"] == 3
    assert "died" in rows[poison]["reason"] and "3" in rows[poison]["reason"]
    assert verify_run(Storage(str(tmp_path / "run"))).ok
