"""The diffusion cost levers of the Wan stages (inpaint, animate, stylize): LoRAs, the steps and guidance they go with,
cache hooks, compilation and the attention backend (``models/wan.py``; docs/performance.md, "Diffusion cost levers").

What is checked: each lever that changes the output changes the stage's fingerprint and the runtime-only ones do not
(and the shipped presets keep theirs); a small random LoRA, built like the tiny models, loads through the stage's own
load path into the real ``WanVACEPipeline`` / ``WanImageToVideoPipeline`` and changes the output as the unfused
adapter does (scale 0: not at all); with a cache hook the transformer runs fewer full forwards than steps x
guidance branches, and without one exactly that many; bad LoRAs are refused naming the param; the FLOPs each choice
costs at real size. The model outputs are arbitrary (random weights): output quality is for real weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.tiny.wan_lora import build as build_lora
from models.wan import LoraError, TaylorSeerCache, WanParams
from pipeline.config import ConfigError, load_config
from pipeline.graph import build_graph
from tests.conftest import stage_of

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"width": 32, "height": 32, "num_frames": 5, "crf": 30, "preset": "ultrafast"}
VACE = {"model": "tiny:wan_vace", **SIZE, "num_inference_steps": 2}
I2V = {"model": "tiny:wan_i2v", **SIZE, "num_inference_steps": 2}
FAST = {"local-gpu-fast": ("local-gpu", ("inpaint",)), "style-gpu-fast": ("ffp300k-style", ("animate", "stylize"))}


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random rank-4 LoRA of the tiny VACE model, as a local safetensors file."""
    return build_lora(tmp_path_factory.mktemp("lora"), "wan_vace", seed=1)


def fingerprint(preset: str, stage: str, *overrides: str) -> str:
    return build_graph(load_config(preset=preset, overrides=list(overrides))).nodes[stage].fingerprint


# Fingerprints -------------------------------------------------------------------------------------------------------


def test_each_output_lever_enters_the_fingerprint_and_runtime_ones_do_not(lora_file: Path, tmp_path: Path) -> None:
    for preset, stage in (("local-tiny", "inpaint"), ("style-tiny", "animate"), ("style-tiny", "stylize")):
        key = f"stages.{stage}.params"
        cache = "{kind: first_block, threshold: 0.05}" if stage == "animate" else "{kind: taylorseer}"
        base = fingerprint(preset, stage)
        levers = {
            "lora": [f"{key}.loras=[{{path: {lora_file}}}]"],
            "lora scale": [f"{key}.loras=[{{path: {lora_file}, scale: 0.5}}]"],
            "tiny lora": [f"{key}.loras=[{{path: 'tiny:wan_vace'}}]"],
            "cache": [f"{key}.cache={cache}"],
            "cache setting": [f"{key}.cache={cache[:-1]}, {'threshold: 0.1' if stage == 'animate' else 'max_order: 2'}}}"],
            "steps": [f"{key}.num_inference_steps=4"],
            "guidance": [f"{key}.guidance_scale=1.0"],
            "quantized attention": [f"{key}.attention_backend=sage"],
        }
        prints = {name: fingerprint(preset, stage, *sets) for name, sets in levers.items()}
        assert base not in prints.values() and len(set(prints.values())) == len(prints), (stage, prints)
        for runtime in ("compile=true", "attention_backend=flash", "attention_backend=_native_cudnn", "offload=group"):
            assert fingerprint(preset, stage, f"{key}.{runtime}") == base, (stage, runtime)

    # a local LoRA is identified by its content (sha256), not only by its path
    copy = tmp_path / "lora.safetensors"
    copy.write_bytes(lora_file.read_bytes())
    first = fingerprint("local-tiny", "inpaint", f"stages.inpaint.params.loras=[{{path: {copy}}}]")
    build_lora(tmp_path / "other", "wan_vace", seed=2).replace(copy)
    os.utime(copy, ns=(1, 1))
    assert fingerprint("local-tiny", "inpaint", f"stages.inpaint.params.loras=[{{path: {copy}}}]") != first
    graph = build_graph(load_config(preset="local-tiny", overrides=[f"stages.inpaint.params.loras=[{{path: {copy}}}]"]))
    [identity] = graph.nodes["inpaint"].models(graph)["inpaint"]["loras"]  # the provenance an export records
    assert len(identity["sha256"]) == 64


def test_new_params_off_keep_every_shipped_fingerprint() -> None:
    """Defaults of the levers leave ``fingerprint_data`` as it was, so no shipped preset's stage goes stale (the new
    fast presets are not pinned yet: see tests/test_fingerprints_pinned.py)."""
    from tests.test_fingerprints_pinned import PINS, fingerprints

    pinned, now = json.loads(PINS.read_text()), fingerprints()
    assert set(pinned) <= set(now)
    assert {p: now[p] for p in pinned} == pinned
    data = WanParams(model="tiny:wan_vace").fingerprint_data()
    assert not {"loras", "cache", "compile"} & set(data) and data["attention_backend"] is None


def test_a_lora_names_the_steps_and_guidance_it_was_distilled_for(lora_file: Path) -> None:
    lora = {"path": str(lora_file), "steps": 4, "guidance_scale": 1.0}
    params = WanParams(model="tiny:wan_vace", loras=[lora])
    assert (params.num_inference_steps, params.guidance_scale, params.forwards_per_step()) == (4, 1.0, 1)
    explicit = WanParams(model="tiny:wan_vace", loras=[lora], num_inference_steps=8)
    assert (explicit.num_inference_steps, explicit.guidance_scale) == (8, 1.0)
    assert WanParams(model="tiny:wan_vace").forwards_per_step() == 2
    with pytest.raises(ValueError, match="the loras declare different steps"):
        WanParams(model="tiny:wan_vace", loras=[lora, {**lora, "steps": 8}])
    for name, (base, stages) in FAST.items():
        graph = build_graph(load_config(preset=name))
        for stage in stages:
            p = graph.nodes[stage].params
            assert (p.num_inference_steps, p.forwards_per_step(), p.loras[0].kind) == (4, 1, "hub"), (name, stage)


def test_fast_presets_are_their_base_preset_with_only_the_diffusion_levers_changed() -> None:
    """No config inherits from another, so the fast presets are copies: this keeps them from drifting apart."""
    levers = {"loras", "num_inference_steps", "guidance_scale"}
    for name, (base_name, stages) in FAST.items():
        fast, base = load_config(preset=name), load_config(preset=base_name)
        assert fast.tracks == base.tracks and fast.gpu == base.gpu and fast.gpu_plans == base.gpu_plans
        for stage, spec in base.stages.items():
            mine = fast.stages[stage]
            assert mine.resources == spec.resources and mine.type == spec.type, (name, stage)
            if stage in stages:
                changed = {k for k in {*spec.params, *mine.params} if spec.params.get(k) != mine.params.get(k)}
                assert changed <= levers, (name, stage, changed)
            elif spec.type == "export":
                assert {k: v for k, v in mine.params.items() if k != "dataset_name"} == \
                    {k: v for k, v in spec.params.items() if k != "dataset_name"}
            else:
                assert mine.params == spec.params, (name, stage)


# LoRAs in the real pipeline ------------------------------------------------------------------------------------------


def vace_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((5, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 255
    return frames, masks


def inpaint(stage: Any, seed: int = 7) -> np.ndarray:
    frames, masks = vace_inputs()
    return np.asarray(stage._generate(frames, masks, "a small brown dog", seed))


def test_a_tiny_random_lora_loads_through_the_stage_and_changes_the_output(lora_file: Path, tmp_path: Path) -> None:
    plain = stage_of("inpaint", VACE, tmp_path / "plain")
    adapted = stage_of("inpaint", {**VACE, "loras": [{"path": str(lora_file)}]}, tmp_path / "lora")
    off = stage_of("inpaint", {**VACE, "loras": [{"path": str(lora_file), "scale": 0.0}]}, tmp_path / "off")
    assert not adapted.pipe.get_list_adapters()  # fused: no LoRA layers left to cost a step anything
    base, with_lora, scale_zero = inpaint(plain), inpaint(adapted), inpaint(off)
    assert np.abs(with_lora - base).max() > 0.02
    assert np.array_equal(scale_zero, base)
    # the fused weights compute what the adapter computes unfused (diffusers' own load, set_adapters)
    pipe = plain.pipe
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name="unfused")
    pipe.set_adapters(["unfused"], adapter_weights=[1.0])
    assert np.abs(inpaint(plain) - with_lora).max() < 1e-4
    # the tiny: path builds the default tiny LoRA the same way (I2V: with its image key/value projections)
    animate = stage_of("animate", {**I2V, "loras": [{"path": "tiny:wan_i2v", "scale": 0.5}]}, tmp_path / "i2v")
    assert animate.fingerprint_extra(animate.params)["loras"] == [{"lora": "tiny:wan_i2v", "tiny_builder": "1"}]


def test_bad_loras_are_refused_naming_the_param(lora_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    full = tmp_path / "full.safetensors"
    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(2, 2)}, full)
    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(b"\x80\x04")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (two / name).write_bytes(lora_file.read_bytes())
    refused = {
        "/nonexistent/lora.safetensors": "no such file",
        str(garbage): "is not a safetensors file",
        str(full): "holds no LoRA tensors",
        str(pickled): "pickled .bin/.pt/.ckpt files can run code",
        str(two): "several .safetensors files .* set weight_name",
        "tiny:sam2_video": "no tiny LoRA",
        "not a repo id": "neither an existing local file or folder nor a Hugging Face repo id",
    }
    for path, message in refused.items():
        with pytest.raises(ConfigError, match=rf"stages\.inpaint\.params\.loras\.0: .*path: .*{message}"):
            load_config(preset="local-tiny", overrides=[f"stages.inpaint.params.loras=[{{path: '{path}'}}]"])
    with pytest.raises(ConfigError, match=r"loras\.0: .*revision: only for a Hugging Face repo"):
        load_config(preset="local-tiny", overrides=[f"stages.inpaint.params.loras=[{{path: {lora_file}, revision: v1}}]"])
    with pytest.raises(ConfigError, match=r"stages\.inpaint\.params\.cache: .*first_block is not usable with VACE"):
        load_config(preset="local-tiny", overrides=["stages.inpaint.params.cache={kind: first_block}"])
    with pytest.raises(ConfigError, match=r"stages\.stylize\.params\.cache: .*magcache is not usable with VACE"):
        load_config(preset="style-tiny", overrides=["stages.stylize.params.cache={kind: magcache, mag_ratios: [1, 1]}"])
    with pytest.raises(ConfigError, match=r"cache\.taylorseer\.disable_cache_before_step"):
        load_config(preset="local-tiny",
                    overrides=["stages.inpaint.params.cache={kind: taylorseer, disable_cache_before_step: 0}"])
    # a well-formed LoRA of another model (its tensor names match no layer; or its shapes do not fit) fails at setup
    for name, tensors in (("other", {"transformer.down.0.lora_A.weight": torch.zeros(4, 8),
                                     "transformer.down.0.lora_B.weight": torch.zeros(8, 4)}),
                          ("wide", {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 4096),
                                    "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(4096, 4)})):
        wrong = tmp_path / f"{name}.safetensors"
        save_file(tensors, wrong)
        with pytest.raises(LoraError, match=rf"^loras\.0\.path '{wrong}': .*(no layer of the transformer|cannot load)"):
            stage_of("inpaint", {**VACE, "loras": [{"path": str(wrong)}]}, tmp_path / name)


# Cache hooks ---------------------------------------------------------------------------------------------------------


def counted(stage: Any) -> dict[str, int]:
    """Counts of the transformer's calls (``calls``) and of the forwards that ran its last main block (``full``)."""
    counts = {"calls": 0, "full": 0}
    transformer = stage.pipe.transformer
    transformer.register_forward_hook(lambda *_: counts.__setitem__("calls", counts["calls"] + 1))
    transformer.blocks[-1].attn1.to_q.register_forward_hook(lambda *_: counts.__setitem__("full", counts["full"] + 1))
    return counts


def test_cache_hooks_run_fewer_full_forwards_than_steps_times_guidance(tmp_path: Path) -> None:
    vace = {**VACE, "num_inference_steps": 4}
    taylor = {"kind": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 1}
    for name, params, expected_full in (
        ("cfg", vace, 8),
        ("no-cfg", {**vace, "guidance_scale": 1.0}, 4),
        ("taylorseer", {**vace, "cache": taylor}, 2 * TaylorSeerCache(**taylor).full_steps(4)),
    ):
        stage = stage_of("inpaint", params, tmp_path / name)
        counts = counted(stage)
        inpaint(stage)
        assert counts["calls"] == 4 * stage.params.forwards_per_step(), (name, counts)
        assert counts["full"] == expected_full, (name, counts)
        if "cache" in params:
            assert counts["full"] < counts["calls"], name
            again = counted(stage)
            inpaint(stage)  # the cache's state is reset between samples (diffusers resets it after every call)
            assert again["full"] == expected_full, name
    assert TaylorSeerCache(**taylor).full_steps(4) == 2

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for name, cache in (("first_block", {"kind": "first_block", "threshold": 1e9}),
                        ("magcache", {"kind": "magcache", "threshold": 1e9, "retention_ratio": 0.0,
                                      "max_skip_steps": 3, "mag_ratios": [1.0] * 2})):
        stage = stage_of("animate", {**I2V, "cache": cache}, tmp_path / name)
        counts = counted(stage)
        stage._generate(image, "a dog", 3)
        # each guidance branch's first forward runs in full; with this threshold every later one is skipped
        assert counts == {"calls": 4, "full": 2}, (name, counts)


def test_block_caches_are_refused_for_vace_because_its_control_hints_would_count_twice() -> None:
    """Why ``first_block`` and ``magcache`` are refused for VACE (diffusers 0.42.1): a cached step whose inputs did not
    change must give the full forward's output. It does for Wan's plain transformer, not for VACE's, whose control
    hints are added between the blocks again on top of a residual that already holds them. If a diffusers update
    makes the VACE case exact, lift the refusal (``WanParams._cache_fits_the_model``)."""
    from diffusers import FirstBlockCacheConfig, WanTransformer3DModel, WanVACETransformer3DModel

    tiny = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16,
            "out_channels": 16, "text_dim": 32, "freq_dim": 256, "ffn_dim": 32, "num_layers": 3,
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024}
    torch.manual_seed(0)
    inputs = {"hidden_states": torch.randn(1, 16, 3, 8, 8), "timestep": torch.tensor([500]),
              "encoder_hidden_states": torch.randn(1, 8, 32), "return_dict": False}
    vace_inputs = {**inputs, "control_hidden_states": torch.randn(1, 96, 3, 8, 8)}
    errors = {}
    for name, model, kwargs in (("wan", WanTransformer3DModel(**tiny), inputs),
                                ("vace", WanVACETransformer3DModel(**tiny, vace_layers=[0, 2]), vace_inputs)):
        model.eval()
        with torch.no_grad():
            full = model(**kwargs)[0]
            model.enable_cache(FirstBlockCacheConfig(threshold=1e9))
            with model.cache_context("cond"):
                model(**kwargs)
                cached = model(**kwargs)[0]
        errors[name] = float((cached - full).abs().max() / full.abs().max())
    assert errors["wan"] < 1e-5 and errors["vace"] > 0.05, errors


# FLOPs at real size --------------------------------------------------------------------------------------------------


def test_the_flops_of_each_lever_at_real_size_and_the_committed_report_is_current() -> None:
    """``python -m models.realsize.levers``: one shape-only VACE-14B forward at 1280x720x81 split by block (it is the
    check's forward, to the FLOP), and each choice's FLOPs per pair from it; the committed report the docs quote is
    what the code computes now."""
    from models.realsize.levers import report

    result = report(load_config(preset="local-gpu"), checks_folder=ROOT / "bench" / "results")
    split = result["splits"]["inpaint"]
    assert split["main_blocks"] == 40 and split["latent"] == [21, 90, 160]
    parts = split["tflops_first_block"] + split["tflops_other_blocks"] + split["tflops_control_blocks"] + \
        split["tflops_embeddings_and_head"]
    assert parts == pytest.approx(split["tflops_forward"], rel=1e-9)
    assert 150 < split["tflops_first_block"] < 180 and split["tflops_other_blocks"] > 35 * split["tflops_first_block"]
    by_name = {c["choice"]: c for c in result["choices"]}
    configured, four = by_name["as configured"], by_name["4-step LoRA, no CFG"]
    forward = split["tflops_forward"] / 1e3
    around = configured["pflops_per_pair"] - 100 * forward  # text encoder, VAE encode and decode: no lever's
    assert four["pflops_per_pair"] == pytest.approx(around + 4 * forward, rel=1e-9)
    assert 780 < configured["pflops_per_pair"] < 800 and 30 < four["pflops_per_pair"] < 35
    assert not any(c["choice"].startswith("first_block") for c in result["choices"])  # VACE refuses it
    committed = json.loads((ROOT / "bench" / "results" / "realsize-levers.json").read_text())
    [old] = [r for r in committed if r["config"] == "local-gpu"]
    assert [c["choice"] for c in old["choices"]] == [c["choice"] for c in result["choices"]]
    for mine, theirs in zip(result["choices"], old["choices"]):
        assert mine["pflops_per_pair"] == pytest.approx(theirs["pflops_per_pair"], rel=1e-6), mine["choice"]


# GPU -----------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_levers_run_together_on_a_gpu(lora_file: Path, tmp_path: Path) -> None:
    """compile (regional) with an exact attention kernel, a fused LoRA and TaylorSeer, in bfloat16 on CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    params = {**VACE, "device": "cuda", "compile": True, "attention_backend": "native",
              "loras": [{"path": str(lora_file)}], "cache": {"kind": "taylorseer", "cache_interval": 2,
                                                              "disable_cache_before_step": 1}}
    stage = stage_of("inpaint", params, tmp_path)
    output = inpaint(stage)
    assert output.shape == (1, 5, 32, 32, 3) and np.isfinite(output).all()
