"""The fingerprints of every shipped preset's stages, pinned: a refactor that changes one would make every run
started with that preset stale (its stages redone, at full GPU price). A change of output is a real reason to
change a fingerprint (a stage's ``version``); then regenerate the pins and say why in the commit:

    python -m tests.test_fingerprints_pinned --write

Presets whose graph lists files when it is built (a style folder) are pinned with the stages that do not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from media.sources import InputListError
from pipeline.config import load_config, preset_names
from pipeline.graph import build_graph

PINS = Path(__file__).parent / "data" / "preset_fingerprints.json"
RUN_DIR = "/nonexistent/ffp-pin"  # fingerprints do not depend on the run folder; the graph needs one


def fingerprints() -> dict[str, dict[str, str]]:
    """{preset: {stage: fingerprint}}; a preset whose graph cannot be built without its input files is left out."""
    out: dict[str, dict[str, str]] = {}
    for name in preset_names():
        try:
            graph = build_graph(load_config(preset=name, run_dir=RUN_DIR))
        except InputListError:
            continue
        out[name] = {stage: node.fingerprint for stage, node in sorted(graph.nodes.items())}
    return out


def test_every_shipped_preset_keeps_its_fingerprints():
    pinned = json.loads(PINS.read_text())
    now = fingerprints()
    assert sorted(now) == sorted(pinned), "presets added or removed: regenerate the pins (see the module docstring)"
    changed = {f"{preset}.{stage}": (pinned[preset].get(stage), fp)
               for preset, stages in now.items() for stage, fp in stages.items() if pinned[preset].get(stage) != fp}
    assert not changed, f"fingerprints changed (pinned, now): {changed}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_fingerprints_pinned --write")
    PINS.write_text(json.dumps(fingerprints(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS}")
