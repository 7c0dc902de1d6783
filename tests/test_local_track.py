"""The local-edit track end to end on real footage: ingest -> plan (Qwen2.5-VL) -> ground (Grounding DINO) ->
track (SAM2) -> inpaint (Wan VACE) -> rubric (Qwen2.5-VL) -> judge -> export, on real Ray, every stage through its real model class (the
``local-tiny`` preset: random-weight tiny models built on this machine). Videos: the dog and cups clips
(tests/footage) and, as a third one of another size and rate, the in-repo stand-in of the schoolgirls sequence
(``tests.media_files.make_davis_standin``: 432x240 at 24 fps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.run import execute
from tests.conftest import by_id, check_track_rows, exported_pairs, manifest_rows, media
from tests.media_files import make_davis_standin

pytestmark = pytest.mark.slow
STAGES = ("ingest", "plan", "ground", "track", "inpaint", "rubric", "judge", "export")
VIDEOS = (("sam2_gallery", "01_dog.mp4"), ("sam2_gallery", "02_cups.mp4"))  # and the schoolgirls stand-in


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, ray_session):
    folder = tmp_path_factory.mktemp("local_videos")
    for parts in VIDEOS:
        (folder / parts[-1]).symlink_to(media(*parts))
    (folder / "schoolgirls_standin.mp4").symlink_to(make_davis_standin(tmp_path_factory.mktemp("standin")))
    run_dir = tmp_path_factory.mktemp("local") / "run"
    config = load_config(preset="local-tiny", overrides=[f"inputs.0.path={folder}"], run_dir=str(run_dir))
    _, report = execute(config)
    return {"config": config, "run": run_dir, "report": report}


def test_every_sample_of_every_stage_ends_ok_filtered_or_failed_with_a_reason(local_run):
    check_track_rows(local_run["report"], local_run["run"], STAGES)
    assert len(manifest_rows(local_run["run"], "ingest")) == len(VIDEOS) + 1


def test_each_clip_becomes_a_swap_and_a_removal_sample_that_reach_the_export(local_run):
    clips = by_id(manifest_rows(local_run["run"], "ingest"))
    plan = by_id(manifest_rows(local_run["run"], "plan"))
    ok_plans = {sid: row for sid, row in plan.items() if row["status"] == "ok"}
    assert ok_plans, "the constrained planner produced no plan"
    for sid, row in ok_plans.items():
        clip, _, task = sid.rpartition("-")
        assert clip in clips and row["input_id"] == clip and row["task"] == task in ("swap", "removal")
        assert row["target"] and row["instruction"] and row["inpaint_prompt"]
    for stage in ("ground", "track", "inpaint", "rubric", "judge", "export"):  # each later stage saw exactly what the one before passed on
        before = {r["sample_id"] for r in manifest_rows(local_run["run"], STAGES[STAGES.index(stage) - 1]) if r["status"] == "ok"}
        assert {r["sample_id"] for r in manifest_rows(local_run["run"], stage)} == before


def test_the_judge_decides_what_is_exported_and_says_why_for_the_rest(local_run):
    judged = by_id(r for r in manifest_rows(local_run["run"], "judge") if r["status"] == "ok")
    exported = by_id(manifest_rows(local_run["run"], "export"))
    assert set(exported) == set(judged)
    for sid, row in judged.items():
        assert row["verdict"] in ("accept", "reject") and row["score_first_frame_psnr"] is not None
        assert row["score_rubric_prompt_following"] is not None or row["verdict"] == "reject"
        if row["verdict"] == "accept":
            assert exported[sid]["status"] == "ok" and not row["reject_reasons"]
        else:  # every reason, in the export's reason too
            assert exported[sid]["status"] == "filtered" and row["reject_reasons"]
            assert all(reason in exported[sid]["reason"] for reason in row["reject_reasons"])
    removals = [row for row in judged.values() if row["task"] == "removal"]
    assert all(row["score_leak"] is not None for row in removals)  # Grounding DINO searched the edited clips


def test_exported_pairs_have_the_configured_frames_size_and_every_field(local_run):
    config = local_run["config"]
    inpaint = config.stage_params("inpaint")
    frames, height, width = inpaint.num_frames, inpaint.height, inpaint.width
    for row, masks, card in exported_pairs(local_run["run"], frames, height, width):
        assert masks.any()
        assert card["task"] == row["sample_id"].rpartition("-")[2] and card["instruction"]
        assert card["captions"]["src"] and card["captions"]["edit"]
        assert set(card["provenance"]["fingerprints"]) == set(STAGES)
        models = card["provenance"]["models"]  # which checkpoint and prompt made each step
        assert models["inpaint"]["model"] == "tiny:wan_vace" and models["plan"]["prompt_version"] == "plan-v1"
        assert models["judge"]["clip"]["model"] == "tiny:clip" and models["rubric"]["model"] == "tiny:qwen2_5_vl"
    assert Path(local_run["run"], "export", "dataset.parquet").exists()


def test_a_second_run_reuses_everything(local_run):
    _, report = execute(local_run["config"])
    assert report.ok and report.summaries == []


def test_inspect_follows_a_pair_back_to_its_clip(local_run, tmp_path):
    from tests.conftest import cli_invoke

    pair = next(r for r in manifest_rows(local_run["run"], "export") if r["status"] == "ok")["sample_id"]
    code, out, err = cli_invoke(["inspect", str(local_run["run"]), pair, "--dump", str(tmp_path / "dump")])
    assert code == 0, err
    clip = pair.rpartition("-")[0]
    for stage in STAGES:
        assert f"{stage}: " in out, stage
    assert f"{clip}.clip.mp4" in out and f"{pair}.edit.mp4" in out
    assert (tmp_path / "dump/ingest/clip.mp4").exists() and (tmp_path / "dump/inpaint/edit.mp4").exists()


@pytest.mark.gpu
def test_the_track_on_cuda_in_bfloat16_with_the_vllm_planner(tmp_path, ray_session):
    """On a GPU node: the same run with every model on CUDA in bf16, and the planner under (GPU) vLLM."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    folder = tmp_path / "videos"
    folder.mkdir()
    for parts in VIDEOS:
        (folder / parts[-1]).symlink_to(media(*parts))
    gpu = [f"stages.{s}.params.{k}={v}" for s in ("ground", "track", "inpaint") for k, v in (("device", "cuda"), ("dtype", "bfloat16"))]
    gpu += [f"stages.{s}.resources.gpus=0.2" for s in ("plan", "ground", "track", "inpaint")]
    config = load_config(
        preset="local-tiny", run_dir=str(tmp_path / "run"),
        overrides=[f"inputs.0.path={folder}", "stages.plan.params.backend=vllm", "stages.plan.params.gpu_memory_utilization=0.2",
                   "ray.num_gpus=1", *gpu],
    )
    _, report = execute(config)
    assert report.ok, report.errors
    assert any(r["status"] == "ok" for r in manifest_rows(tmp_path / "run", "export"))
