"""Contracts that drive the framework (issue 17): a stage defined here, registered with one registry entry,
declares a pair column and sees it carried into ``export/dataset.parquet`` and the report; a stage that reads a
column or field it did not declare is refused at run time, as it is when the graph is built."""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.layout import manifest_path
from pipeline.config import config_to_yaml
from pipeline.stage import Result, Sample, Stage
from stages import registry
from stages.export import PAIR_COLUMNS
from tests.conftest import FAST_INGEST, make_config, manifest_rows, run_local

SYNTH_PAIR = {"src": "aug.mp4", "edit": "clip.mp4", "edit0": "frame0.png", "mask": "aug_mask.npz"}


class Tag(Stage):
    """A new stage: one class, a pair column declared, nothing else in the framework told about it."""

    reads = ("frame0.png", "width")
    columns: ClassVar[dict[str, pa.DataType]] = {"tag_note": pa.string(), "tag_size": pa.int64()}
    pair_columns = ("tag_note",)

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [Result.ok(s.sample_id, tag_note=f"w{s.columns['width']}", tag_size=len(s.read("frame0.png")))
                for s in samples]


class Peek(Stage):
    """Declares only ``frame0.png`` but reads more: the column named by ``PEEK`` or the field ``clip.mp4``."""

    reads = ("frame0.png",)
    columns: ClassVar[dict[str, pa.DataType]] = {"peeked": pa.string()}
    what = "column"

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        out = []
        for sample in samples:
            sample.read("frame0.png")  # declared: fine
            if Peek.what == "column":
                value = sample.columns.get("fps")  # written by ingest, not declared here
            else:
                value = len(sample.read("clip.mp4"))
            out.append(Result.ok(sample.sample_id, peeked=str(value)))
        return out


@pytest.fixture
def tag_stage(monkeypatch):
    monkeypatch.setitem(registry.STAGES, "tag", f"{__name__}:Tag")  # the one registry line
    return "tag"


def tagged_config(run_dir: Path, vos: Path):
    return make_config(
        run_dir,
        inputs=[{"kind": "vos", "path": str(vos), "fps": 16}],
        stages={
            "ingest": {"type": "ingest", "params": {**FAST_INGEST, "max_clips": 1}},
            "augment": {"type": "synth_augment", "params": {"seed": 0, "crf": 30, "preset": "ultrafast"}},
            "tag": {"type": "tag", "params": {}},
            "judge": {"type": "judge", "params": {**SYNTH_PAIR, "clip": None, "dino": None, "leak": None,
                                                  "thresholds": {}}},
            "export": {"type": "export", "params": {"dataset_name": "contract-test"}},
        },
    )


def test_a_new_stage_pair_column_reaches_the_dataset_and_the_report(tmp_path, demo_vos, tag_stage):
    from app.report import build_report

    run_dir = tmp_path / "run"
    config = tagged_config(run_dir, demo_vos)
    runner = run_local(config, finalize=True)
    (run_dir / "run.yaml").write_text(config_to_yaml(config))  # as `ffp run` leaves it, for the report

    assert "tag_note" in runner.graph.nodes["export"].pair_columns
    tagged = {r["sample_id"]: r for r in manifest_rows(run_dir, "tag")}
    dataset = pq.read_table(run_dir / "export" / "dataset.parquet")
    # the standard pair schema first, unchanged, then the new stage's pair column; its other column stays its own
    assert dataset.column_names[-len(PAIR_COLUMNS) - 1:] == [*PAIR_COLUMNS, "tag_note"]
    assert "tag_size" not in dataset.column_names
    rows = dataset.to_pylist()
    assert rows and all(row["tag_note"] == "w96" == tagged[row["sample_id"]]["tag_note"] for row in rows)
    card = json.loads(_first_pair_json(run_dir))
    assert card["tag_note"] == "w96"

    result = build_report(str(run_dir), str(tmp_path / "report"))
    details = [json.loads(_js_value(tmp_path / "report" / rel)) for rel in result.files if rel.startswith("pairs/")]
    columns = [pair["columns"] for chunk in details for pair in chunk]
    assert columns and all(c.get("tag_note") == "w96" for c in columns), columns[:3]


def test_reading_an_undeclared_column_or_field_is_refused_at_run_time(tmp_path, demo_vos, monkeypatch):
    monkeypatch.setitem(registry.STAGES, "peek", f"{__name__}:Peek")
    for what in ("column", "field"):
        monkeypatch.setattr(Peek, "what", what)
        run_dir = tmp_path / what
        config = make_config(
            run_dir, inputs=[{"kind": "vos", "path": str(demo_vos), "fps": 16}],
            stages={"ingest": {"type": "ingest", "params": FAST_INGEST}, "peek": {"type": "peek", "params": {}}},
        )
        run_local(config)
        rows = manifest_rows(run_dir, "peek")
        assert rows and {r["status"] for r in rows} == {"failed"}
        name = "fps" if what == "column" else "clip.mp4"
        for row in rows:
            assert row["attempts"] == 1  # a stage bug, the same every time: refused, not retried
            assert f"stage 'peek' read {what} '{name}', which it does not declare" in row["reason"], row["reason"]
        assert (run_dir / manifest_path("peek", 0)).exists()  # the shard still commits


def test_undeclared_columns_are_absent_declared_ones_present(tmp_path, demo_vos, tag_stage):
    from pipeline.stage import UndeclaredRead
    from pipeline.worker import _LazyReaders, upstream_samples

    config = tagged_config(tmp_path / "run", demo_vos)
    runner = run_local(config, stages=["ingest", "augment"])
    with _LazyReaders(runner.storage, runner.graph, 0) as readers:
        samples = upstream_samples(runner.storage, runner.graph, "tag", 0, readers)
        assert samples
        sample = samples[0]
        assert set(sample.columns) == {"width"}
        assert sample.columns.get("no_stage_writes_this") is None  # unknown names read as absent, as before
        with pytest.raises(UndeclaredRead, match="'tag' read column 'task'"):
            sample.columns.get("task")
        with pytest.raises(UndeclaredRead, match="'tag' read field 'clip.mp4'"):
            sample.read("clip.mp4")
        assert sample.read("frame0.png")


def _first_pair_json(run_dir: Path) -> bytes:
    from manifests.shards import open_shard
    from manifests.storage import Storage

    info = json.loads(pq.read_schema(run_dir / manifest_path("export", 0)).metadata[b"ffp"])
    tar = open_shard(Storage(str(run_dir)), info["tar_path"])
    try:
        return tar.read(tar.keys[0], "json")
    finally:
        tar.close()


def _js_value(path: Path) -> str:
    """The JSON text of a report file that holds ``JSON.parse("...")``."""
    text = path.read_text()
    literal, _ = json.JSONDecoder().raw_decode(text, text.index("JSON.parse(") + len("JSON.parse("))
    return literal


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


CORE_PACKAGES = ("pipeline", "manifests")
CORE_MAY_IMPORT = {"stages.registry"}  # the one link from the framework to the stages
ENTRY_POINTS = {Path("pipeline/__main__.py")}  # `python -m pipeline` starts the application


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def core_imports_of_the_application(root: Path) -> list[str]:
    found = []
    for package in CORE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if path.relative_to(root) in ENTRY_POINTS:
                continue
            for module in sorted(imported_modules(path)):
                top = module.split(".")[0]
                if top in ("app", "media", "models", "stages") and module not in CORE_MAY_IMPORT:
                    found.append(f"{path.relative_to(root)} imports {module}")
    return found


def test_the_core_imports_no_stage_model_media_or_application_module():
    root = Path(__file__).resolve().parents[1]
    assert core_imports_of_the_application(root) == []


def test_the_import_check_sees_a_function_level_import(tmp_path):
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "late.py").write_text("def f():\n    from models.wan import WanBackend\n")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "ok.py").write_text("from stages.registry import stage_class\n")
    assert core_imports_of_the_application(tmp_path) == ["pipeline/late.py imports models.wan"]
