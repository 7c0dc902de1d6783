"""The run folder's layout has one owner (issue 17): ``manifests/layout.py`` is the only module that spells a
path inside a run folder; every other module asks it. Docstrings and comments may name paths (they explain);
code may not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from manifests import layout
from pipeline.config import validate_config
from pipeline.graph import build_graph

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("manifests", "pipeline", "stages")
OWNER = Path("manifests/layout.py")
RUN_PATH = re.compile(r"(^|[^\w./-])(stages|manifests|sources|index|logs|labels)/|_partial|^run\.yaml$")
REPO_PATH = re.compile(r"stages/(prompts|realsize)/|\.py\b")
"""Paths of this repository named in messages (``models/prompts/NAME.md``), not of a run folder."""


def spelled_run_paths(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string in code (not a docstring) that spells a run-folder path."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    docstrings |= {id(node.value) for node in ast.walk(tree)  # attribute docstrings: a bare string statement
                   if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and RUN_PATH.search(node.value) and not REPO_PATH.search(node.value)):
                found.append((node.lineno, node.value))
    return found


def run_path_spellings(root: Path = ROOT) -> dict[str, list[tuple[int, str]]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if rel == OWNER:
                continue
            found = spelled_run_paths(path.read_text())
            if found:
                out[str(rel)] = found
    return out


def test_no_module_but_the_layout_spells_a_run_folder_path():
    found = run_path_spellings()
    assert not found, "run-folder paths spelled outside manifests/layout.py (ask manifests.layout):\n" + "\n".join(
        f"  {rel}:{line}: {text!r}" for rel, places in found.items() for line, text in places)


def test_the_scanner_sees_what_it_is_for():
    assert spelled_run_paths('x = f"manifests/{stage}"') == [(1, "manifests/")]
    assert spelled_run_paths('x = f"stages/{s}/_partial"')
    assert spelled_run_paths('RUN_YAML = "run.yaml"')
    assert not spelled_run_paths('x = "packaged prompt name (models/prompts/NAME.md)"')
    assert not spelled_run_paths('"""A docstring naming manifests/<stage>/ and _partial/."""')
    assert not spelled_run_paths('def f():\n    """from _partial/"""\n    return 1')
    assert not spelled_run_paths('raise ValueError(f"stages {names} are in no track")')


def test_layout_keeps_where_things_land():
    """The paths every existing run has (a run started before the layout module must resume as it is)."""
    assert layout.manifest_path("ingest", 7) == "manifests/ingest/shard-000007.parquet"
    assert layout.partial_dir("export", 0) == "stages/export/_partial/shard-000000"
    assert layout.sources_path("ingest") == "sources/ingest.parquet"
    assert layout.COMMIT_CACHE == "index/commits.parquet"
    assert layout.shard_of("stages/x/_partial/shard-000012") == 12
    assert layout.shard_of("manifests/x/shard-000003.parquet") == 3


@pytest.mark.parametrize("folder", [None, "export", "out/pairs"])
def test_a_stage_folders_come_from_one_place(tmp_path, folder):
    params = {"dataset_name": "t"} | ({"folder": folder} if folder else {})
    config = validate_config({
        "name": "t", "run_dir": str(tmp_path), "inputs": [{"kind": "videos", "path": str(tmp_path)}],
        "stages": {"ingest": {"type": "ingest"}, "augment": {"type": "synth_augment"},
                   "export": {"type": "export", "params": params}},
        "tracks": {"main": ["ingest", "augment", "export"]},
    })
    graph = build_graph(config)
    ingest, export = graph.nodes["ingest"], graph.nodes["export"]
    assert ingest.tar_path(1) == "stages/ingest/shard-000001.tar"
    assert ingest.folders.partial_dir(1) == layout.partial_dir("ingest", 1) == "stages/ingest/_partial/shard-000001"
    tars = folder or "export"
    assert export.output_dir == tars and export.tar_path(0) == f"{tars}/shard-000000.tar"
    # a published folder holds pairs only: the checkpoints stay in the stage's work folder, where runs have them
    assert export.folders.partial_dir(0) == layout.partial_dir("export", 0) == "stages/export/_partial/shard-000000"
    assert export.cls.finalize_outputs_for(export.params) == (f"{tars}/dataset.parquet", f"{tars}/README.md")
