"""vLLM against transformers on the tiny Qwen2.5-VL, run by tests/test_plan_vllm.py in a subprocess (vLLM
spawns processes, so this needs its own interpreter and a ``__main__`` guard).

    python tests/vllm_parity.py OUT.json [MEDIA_DIR]

Starts the plan stage with the vllm backend (its ``setup()`` creates our ``VllmBackend``), then runs our
``VllmBackend`` and our ``TransformersBackend`` on the same requests (an image prompt, the stage's own
image + video prompt, and that prompt constrained by the plan's JSON schema) with greedy decoding and a fixed
``max_new_tokens``; the same requests again from two threads at once (an actor with several shards in flight);
then the plan stage itself on two clips (structured output on). Writes token ids, results and timings to OUT.json. Exits 77 if vLLM does not
import. Clips come from MEDIA_DIR/sam2_gallery when given, else are synthetic.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PARITY_TOKENS = 24
VLLM_IMPORT_FAILED = 77


def clips(media_dir: Path | None) -> list[Any]:
    import numpy as np

    from media.png import png_bytes
    from media.video_io import ClipSpec, cut_clips, encode_frames
    from tests.conftest import sample_of

    samples = []
    if media_dir is not None:
        spec = ClipSpec(num_frames=9, fps=8, width=320, height=180, crf=30, preset="ultrafast")
        for name in ("01_dog", "02_cups"):
            (clip,) = cut_clips(str(media_dir / "sam2_gallery" / f"{name}.mp4"), spec)
            files = {"frame0.png": png_bytes(clip.first_frame), "clip.mp4": clip.mp4}
            samples.append(sample_of(name, {"fps": clip.fps}, files))
        return samples
    rng = np.random.default_rng(0)
    for name in ("noise_a", "noise_b"):
        frames = rng.integers(0, 255, (9, 96, 160, 3), dtype=np.uint8)
        files = {"frame0.png": png_bytes(frames[0]), "clip.mp4": encode_frames(frames, 8.0, preset="ultrafast")}
        samples.append(sample_of(name, {"fps": 8.0}, files))
    return samples


def main(out_path: Path, media_dir: Path | None) -> int:
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: no usable vLLM here
        print(f"vllm does not import: {type(exc).__name__}: {exc}", file=sys.stderr)
        return VLLM_IMPORT_FAILED
    from dataclasses import replace

    from manifests.storage import Storage
    from models.vlm import TransformersBackend, VLMRequest
    from pipeline.stage import StageContext
    from stages.plan import Plan, PlanParams

    samples = clips(media_dir)
    params = PlanParams(
        model="tiny:qwen2_5_vl", backend="vllm", frames=4, max_new_tokens=4096, max_num_seqs=4,
        max_num_batched_tokens=3072, enforce_eager=True, filter_flags=[], require_tasks=True,
    )
    stage = Plan(params, StageContext(name="plan", run=Storage(str(out_path.parent / "run"))))
    started = time.perf_counter()
    stage.setup()
    start_s = time.perf_counter() - started

    scheduler = stage.backend.engine.vllm_config.scheduler_config  # type: ignore[union-attr]
    engine_batch = {"max_num_batched_tokens": scheduler.max_num_batched_tokens, "max_num_seqs": scheduler.max_num_seqs}

    plan_request = replace(stage.request(samples[0]), json_schema=None, max_new_tokens=PARITY_TOKENS)
    describe = ({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the dog."}]},)
    image_request = VLMRequest(describe, plan_request.images, max_new_tokens=PARITY_TOKENS)
    constrained = replace(stage.request(samples[1]), max_new_tokens=PARITY_TOKENS * 8)  # JSON schema on
    requests = [image_request, plan_request, constrained]
    assert stage.backend is not None
    started = time.perf_counter()
    vllm_out = stage.backend.generate(requests)
    vllm_parity_s = time.perf_counter() - started
    with ThreadPoolExecutor(max_workers=2) as pool:  # two shards of an actor asking the one engine at once
        concurrent = list(pool.map(stage.backend.generate, [requests, requests]))
    transformers_out = TransformersBackend(params.model_copy(update={"backend": "transformers"})).generate(requests)

    started = time.perf_counter()
    results = stage.process(samples)
    plan_s = time.perf_counter() - started
    report = {
        "vllm_ids": [list(g.token_ids) for g in vllm_out],
        "engine_batch": engine_batch,
        "concurrent_ids": [[list(g.token_ids) for g in out] for out in concurrent],
        "transformers_ids": [list(g.token_ids) for g in transformers_out],
        "results": [
            {"sample_id": r.sample_id, "status": str(r.status), "reason": r.reason, "columns": r.columns,
             "plan": json.loads(r.files["plan.json"]) if "plan.json" in r.files else None}
            for r in results
        ],
        "timings": {
            "vllm_start_s": round(start_s, 2), "vllm_parity_generate_s": round(vllm_parity_s, 3),
            "plan_clips": len(samples), "plan_s_per_clip": round(plan_s / len(samples), 3),
        },
    }
    out_path.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
