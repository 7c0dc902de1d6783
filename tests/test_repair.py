"""``ffp verify --repair`` without Ray (issue 19): verify's structured findings, the shards that depend on a damaged
one, what a repair removes and in which order, and that a repaired run made whole again by the in-process
scheduler equals the undamaged run while every other shard keeps its bytes and mtime. The same with real
``ffp run`` processes is in ``tests/faults/test_repair.py``."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from manifests import layout
from manifests.lease import Lease
from manifests.storage import TEMP_MARKER, Storage
from manifests.verify import Kind, verify_run
from pipeline.config import config_to_yaml
from pipeline.graph import build_graph
from pipeline.repair import dependents, plan_repair, repair_run
from tests.conftest import LocalRun, cli_invoke, make_config, manifest_rows, run_local, synth_config

STAGES = ("ingest", "augment", "export")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory, demo_vos: Path) -> Path:
    """ingest -> augment -> export, 2 shards each, run in-process and finalized, with the run.yaml and finalize
    markers that ``ffp run`` writes."""
    run_dir = tmp_path_factory.mktemp("repair") / "run"
    config = synth_config(run_dir, demo_vos)
    run_local(config, finalize=True)
    storage = Storage(str(run_dir))
    storage.write_bytes(layout.RUN_YAML, config_to_yaml(config).encode())
    for stage in STAGES:
        storage.write_bytes(layout.finalized_marker(stage), b"done")
    return run_dir


@pytest.fixture
def run_copy(good_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(good_run, target)
    return target


def _graph(run_dir: Path):
    from pipeline.run import load_run_config

    return build_graph(load_run_config(str(run_dir)))


def _manifest(stage: str, shard: int) -> str:
    return layout.manifest_path(stage, shard)


def _tar(stage: str, shard: int) -> str:
    return f"{'export' if stage == 'export' else layout.work_dir(stage)}/{layout.shard_name(shard)}.tar"


def _flip(run_dir: Path, rel: str) -> None:
    path = run_dir / rel
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01  # inside the first member's data: the tar still parses
    path.write_bytes(bytes(data))


def _truncate(run_dir: Path, rel: str) -> None:
    path = run_dir / rel
    path.write_bytes(path.read_bytes()[:-2048])


def _files(run_dir: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every shard file (manifests and tars) of the run folder."""
    found = {}
    for path in sorted([*run_dir.glob("manifests/*/shard-*.parquet"), *run_dir.rglob("shard-*.tar")]):
        if layout.PARTIAL not in path.parts:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(run_dir))] = (digest, path.stat().st_mtime_ns)
    return found


def _shard_files(*keys: tuple[str, int]) -> set[str]:
    return {path for stage, shard in keys for path in (_manifest(stage, shard), _tar(stage, shard))}


EXPORT_FINALIZED = {layout.finalized_marker("export"), "export/dataset.parquet", "export/README.md"}


def _finalized(*stages: str) -> set[str]:
    return {layout.finalized_marker(stage) for stage in stages} | (EXPORT_FINALIZED if "export" in stages else set())


# The shards that depend on a damaged one -------------------------------------------------------------------


def test_dependents_are_the_same_shard_of_every_stage_downstream(tmp_path: Path, demo_vos: Path) -> None:
    graph = build_graph(synth_config(tmp_path / "run", demo_vos))
    assert dependents(graph, "ingest", 1) == [("augment", 1), ("export", 1)]
    assert dependents(graph, "augment", 0) == [("export", 0)]
    assert dependents(graph, "export", 3) == []


def test_dependents_follow_the_graph_not_the_stage_order(tmp_path: Path, demo_vos: Path) -> None:
    """Two branches after ingest: damage on one branch does not reach the other."""
    config = make_config(
        tmp_path / "run",
        inputs=[{"kind": "vos", "path": str(demo_vos), "fps": 16}],
        stages={
            "ingest": {"type": "ingest", "params": {"num_frames": 9}},
            "augment": {"type": "synth_augment", "params": {"seed": 0}},
            "export": {"type": "export", "params": {"dataset_name": "a"}},
            "other": {"type": "synth_augment", "params": {"seed": 1}},
            "export_other": {"type": "export", "params": {"dataset_name": "b", "folder": "export_other"}},
        },
        tracks={"main": ["ingest", "augment", "export"], "side": ["ingest", "other", "export_other"]},
    )
    graph = build_graph(config)
    assert dependents(graph, "augment", 2) == [("export", 2)]
    assert dependents(graph, "other", 2) == [("export_other", 2)]
    assert sorted(dependents(graph, "ingest", 0)) == [("augment", 0), ("export", 0), ("export_other", 0), ("other", 0)]


# verify's findings carry what repair needs ------------------------------------------------------------------


def test_findings_name_their_kind_stage_and_shard(run_copy: Path) -> None:
    _flip(run_copy, _tar("augment", 0))
    _truncate(run_copy, _tar("export", 1))
    (run_copy / _manifest("ingest", 1)).unlink()
    (run_copy / _manifest("export", 0)).write_bytes(b"not parquet")
    shutil.copy(run_copy / _manifest("augment", 1), run_copy / _manifest("augment", 7))
    (run_copy / f"{_tar('ingest', 0)}{TEMP_MARKER}0123456789ab").write_bytes(b"half")

    report = verify_run(Storage(str(run_copy)))
    found = {(f.kind, f.path, f.stage, f.shards) for f in report.findings}
    assert (Kind.TAR_SHA256, _tar("augment", 0), "augment", (0,)) in found
    assert (Kind.TAR_SIZE, _tar("export", 1), "export", (1,)) in found
    assert (Kind.UNCOMMITTED_TAR, _tar("ingest", 1), None, ()) in found
    assert (Kind.UNREADABLE_MANIFEST, _manifest("export", 0), "export", (0,)) in found
    assert (Kind.UNCOMMITTED_TAR, _tar("export", 0), None, ()) in found  # its manifest is unreadable
    assert (Kind.DUPLICATE_IDS, layout.manifests_dir("augment"), "augment", (1, 7)) in found
    assert (Kind.TEMPORARY, f"{_tar('ingest', 0)}{TEMP_MARKER}0123456789ab", None, ()) in found
    assert report.problems == [f.message for f in report.findings]
    assert report.committed[("augment", 7)] == _tar("augment", 1)  # the copy's tar is the one it names


def test_verify_json_keeps_its_keys_and_adds_findings(run_copy: Path) -> None:
    _flip(run_copy, _tar("augment", 0))
    code, out, _ = cli_invoke(["verify", str(run_copy), "--json"])
    report = json.loads(out)
    assert code == 1
    assert {"ok", "problems", "warnings", "shards", "rows", "findings"} <= set(report) and "repair" not in report
    [finding] = report["findings"]
    assert finding["kind"] == "tar-sha256" and finding["stage"] == "augment" and finding["shards"] == [0]
    assert finding["message"] == report["problems"][0]


# What a repair removes, and in which order -------------------------------------------------------------------


def test_the_plan_removes_manifests_downstream_first_then_tars(run_copy: Path) -> None:
    _flip(run_copy, _tar("augment", 0))
    storage = Storage(str(run_copy))
    plan = plan_repair(storage, _graph(run_copy), verify_run(storage))
    assert list(plan.damaged) == [("augment", 0)] and plan.dependents == {("export", 0): ("augment", 0)}
    assert plan.regenerate == [("augment", 0), ("export", 0)] and not plan.unrepaired
    paths = [r.path for r in plan.removals]
    assert set(paths) == _shard_files(("augment", 0), ("export", 0)) | _finalized("augment", "export")
    assert paths.index(_manifest("export", 0)) < paths.index(_manifest("augment", 0)) < paths.index(_tar("export", 0))
    assert max(paths.index(p) for p in _finalized("augment", "export")) < paths.index(_manifest("export", 0))
    assert paths.index(_manifest("augment", 0)) < paths.index(_tar("augment", 0))


def test_checkpoints_of_dependents_go_and_the_damaged_shard_keeps_its_own(run_copy: Path) -> None:
    _flip(run_copy, _tar("augment", 0))
    for stage in ("augment", "export"):
        folder = run_copy / layout.partial_dir(stage, 0)
        folder.mkdir(parents=True)
        (folder / "x-c000.rows.json").write_text("[]")
    storage = Storage(str(run_copy))
    plan = plan_repair(storage, _graph(run_copy), verify_run(storage))
    partial = [r for r in plan.removals if layout.is_checkpoint(r.path + "/")]
    assert [(r.path, r.recursive) for r in partial] == [(layout.partial_dir("export", 0), True)]


def test_a_tar_outside_every_stage_is_left_alone_and_fails_the_repair(run_copy: Path) -> None:
    stray = run_copy / "notes" / "mine.tar"
    stray.parent.mkdir()
    stray.write_bytes(b"x")
    code, out, _ = cli_invoke(["verify", str(run_copy), "--repair"])
    assert code == 1 and "not repaired" in out and "notes/mine.tar" in out, out
    assert stray.exists()


# Repair, then run again: the run is whole, and nothing else moved ---------------------------------------------


def _delete(rel: str) -> Callable[[Path], None]:
    return lambda run_dir: (run_dir / rel).unlink()


def _garble(rel: str) -> Callable[[Path], None]:
    return lambda run_dir: (run_dir / rel).write_bytes(b"not parquet")


def _duplicate(run_dir: Path) -> None:
    shutil.copy(run_dir / _manifest("ingest", 0), run_dir / _manifest("ingest", 5))


def _temporary(run_dir: Path) -> None:
    (run_dir / f"{_manifest('augment', 1)}{TEMP_MARKER}0123456789ab").write_bytes(b"")


DAMAGE = {
    # name: (damage, damaged shards, their dependents, other files removed)
    "flipped augment tar": (lambda d: _flip(d, _tar("augment", 0)), [("augment", 0)], [("export", 0)], set()),
    "deleted ingest manifest": (
        _delete(_manifest("ingest", 1)), [("ingest", 1)], [("augment", 1), ("export", 1)], set()),
    "truncated export tar": (lambda d: _truncate(d, _tar("export", 1)), [("export", 1)], [], set()),
    "unreadable augment manifest": (_garble(_manifest("augment", 1)), [("augment", 1)], [("export", 1)], set()),
    "missing augment tar": (_delete(_tar("augment", 0)), [("augment", 0)], [("export", 0)], set()),
    "manifest copied to another shard": (
        _duplicate, [("ingest", 0), ("ingest", 5)], [("augment", 0), ("export", 0)], {_manifest("ingest", 5)}),
    "orphan temporary": (_temporary, [], [], {f"{_manifest('augment', 1)}{TEMP_MARKER}0123456789ab"}),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_repair_then_rerun_equals_the_undamaged_run(name: str, run_copy: Path, good_run: Path, demo_vos: Path) -> None:
    damage, damaged, dependent, others = DAMAGE[name]
    before = _files(run_copy)
    damage(run_copy)
    storage = Storage(str(run_copy))
    assert not verify_run(storage).ok
    expected = {p for p in _shard_files(*damaged, *dependent) if (run_copy / p).exists()}
    expected |= _finalized(*{stage for stage, _ in [*damaged, *dependent]}) | others

    result = repair_run(storage, _graph(run_copy))
    assert result.complete and result.error is None, result.plan.unrepaired
    assert sorted(result.plan.regenerate) == sorted(key for key in [*damaged, *dependent] if key[1] < 2)
    assert {r.path for r in result.removed} == expected
    assert not any((run_copy / path).exists() for path in expected)
    after_repair = verify_run(storage)
    assert after_repair.ok, after_repair.problems

    LocalRun(synth_config(run_copy, demo_vos)).run(finalize=True)
    assert verify_run(storage).ok
    for stage in STAGES:
        assert [(r["sample_id"], r["status"]) for r in manifest_rows(run_copy, stage)] == \
            [(r["sample_id"], r["status"]) for r in manifest_rows(good_run, stage)], stage
    after = _files(run_copy)
    untouched = {p for p in before if p not in _shard_files(*damaged, *dependent)}
    assert {p: after.get(p) for p in untouched} == {p: before[p] for p in untouched}
    assert set(after) == set(before)


# The command ----------------------------------------------------------------------------------------------------


def test_cli_repair_lists_what_it_removed_and_what_to_run(run_copy: Path) -> None:
    _flip(run_copy, _tar("augment", 0))
    code, out, _ = cli_invoke(["verify", str(run_copy), "--repair", "--dry-run"])
    assert code == 1 and "would remove" in out, out
    assert (run_copy / _tar("augment", 0)).exists() and (run_copy / _manifest("export", 0)).exists()

    code, out, _ = cli_invoke(["verify", str(run_copy), "--repair"])
    assert code == 0, out
    removed = {line.split()[1] for line in out.splitlines() if line.startswith("removed ")}
    assert removed == _shard_files(("augment", 0), ("export", 0)) | _finalized("augment", "export")
    assert f"run `ffp run {run_copy}` to regenerate 2 shards" in out
    assert not (run_copy / layout.LEASE).exists(), "the repair did not release the lease"

    code, out, _ = cli_invoke(["verify", str(run_copy), "--repair", "--json"])
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["repair"]["removed"] == [] and report["repair"]["complete"]


def test_cli_repair_json(run_copy: Path) -> None:
    (run_copy / _manifest("ingest", 1)).unlink()
    code, out, _ = cli_invoke(["verify", str(run_copy), "--repair", "--json"])
    report = json.loads(out)
    assert code == 0 and not report["ok"], report
    assert report["repair"]["regenerate"] == [["ingest", 1], ["augment", 1], ["export", 1]]
    assert {r["path"] for r in report["repair"]["removed"]} == (
        _shard_files(("ingest", 1), ("augment", 1), ("export", 1)) - {_manifest("ingest", 1)}
    ) | _finalized(*STAGES)


def test_repair_refuses_while_a_driver_holds_the_lease_and_plain_verify_ignores_it(run_copy: Path) -> None:
    _flip(run_copy, _tar("augment", 0))
    lease = Lease(Storage(str(run_copy)))
    lease.acquire()
    try:
        held = (run_copy / layout.LEASE).read_bytes()
        before = _files(run_copy)
        code, _, err = cli_invoke(["verify", str(run_copy), "--repair"])
        assert code == 2 and "being run by another driver" in err, err
        code, _, _ = cli_invoke(["verify", str(run_copy)])
        assert code == 1
        assert _files(run_copy) == before and (run_copy / layout.LEASE).read_bytes() == held
    finally:
        lease.release()


def test_plain_verify_points_to_repair_and_dry_run_needs_repair(run_copy: Path) -> None:
    _flip(run_copy, _tar("augment", 0))
    code, out, _ = cli_invoke(["verify", str(run_copy)])
    assert code == 1 and f"ffp verify {run_copy} --repair" in out, out
    code, _, err = cli_invoke(["verify", str(run_copy), "--dry-run"])
    assert code == 2 and "--dry-run goes with --repair" in err, err
