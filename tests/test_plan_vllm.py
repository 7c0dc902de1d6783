"""vLLM backend of the plan stage on the tiny Qwen2.5-VL: same greedy tokens as transformers, and schema-
constrained plans that always parse. Runs tests/vllm_parity.py in a subprocess (vLLM spawns processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from manifests.manifest import Status
from stages.plan import PlanV1
from tests.conftest import MEDIA

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("vllm_parity.py")
VLLM_IMPORT_FAILED = 77


def test_vllm_matches_transformers_and_plans_parse(tmp_path: Path) -> None:
    out = tmp_path / "parity.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(SCRIPT), str(out)] + ([str(MEDIA)] if (MEDIA / "sam2_gallery").is_dir() else [])
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=540, check=False)
    if proc.returncode == VLLM_IMPORT_FAILED:
        pytest.skip(f"vLLM is not usable here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())

    # greedy decoding: our VllmBackend and our TransformersBackend give the same tokens (image; image + video;
    # image + video under the plan's JSON schema: xgrammar in both)
    assert len(report["vllm_ids"]) == 3 and all(report["vllm_ids"])
    assert report["vllm_ids"] == report["transformers_ids"]
    # the stage's batch limits reach the engine (runtime-only params: speed and memory, not the answers)
    assert report["engine_batch"] == {"max_num_batched_tokens": 3072, "max_num_seqs": 4}
    # two threads asking the one engine at once (an actor with shards in flight) get the same answers
    assert report["concurrent_ids"] == [report["vllm_ids"]] * 2

    # structured output: every clip's plan parses (ok rows, nothing failed), and plan.json follows the schema
    results = report["results"]
    assert [r["status"] for r in results] == [str(Status.OK)] * 4, [(r["sample_id"], r["reason"]) for r in results]
    assert sorted(r["sample_id"].rsplit("-", 1)[1] for r in results) == ["removal", "removal", "swap", "swap"]
    for result in results:
        plan = PlanV1.model_validate(result["plan"]["plan"])
        edit = plan.swap if result["columns"]["task"] == "swap" else plan.removal
        assert edit is not None and result["columns"]["target"] == edit.target
        assert result["plan"]["backend"] == "vllm" and result["plan"]["repaired"] is False
    print("timings:", report["timings"])
