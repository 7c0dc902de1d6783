"""Tiny random LoRAs for the tiny Wan models (``tiny:wan_vace``, ``tiny:wan_i2v``), in the diffusers/peft format.

A LoRA here adapts what the distilled Wan 2.1 LoRAs adapt (CausVid, lightx2v, FusionX): every linear layer of the
main transformer blocks (self- and cross-attention projections, the feed-forward; for I2V also the image key/value
projections), with ``lora_A`` / ``lora_B`` pairs of a small rank. It is written by the pipeline class's own
``save_lora_weights`` (``transformer.``-prefixed tensor names, peft's ``LoraConfig`` as the file's adapter metadata),
so it loads through the same ``load_lora_weights`` path as a real one. The values are random (seeded): a LoRA
changes the output, scale 0 leaves it as it was, and what it does to the pixels means nothing.

``ensure(arch)`` builds the default one once per machine under the tiny cache (as :func:`models.tiny.ensure` builds the
models) and returns its folder; :func:`build` writes one anywhere (tests build others: other seeds, broken ones).
"""

from __future__ import annotations

from pathlib import Path

VERSION = "1"
ARCHES = ("wan_vace", "wan_i2v")
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "attn2.add_k_proj", "attn2.add_v_proj", "ffn.net.0.proj", "ffn.net.2")
"""Layers of each main block a LoRA adapts (those a model has: ``add_k_proj``/``add_v_proj`` are I2V's)."""


def _pipeline_class(arch: str) -> type:
    import diffusers

    if arch not in ARCHES:
        raise ValueError(f"no tiny LoRA for {arch!r}; tiny LoRAs: {', '.join(ARCHES)}")
    return diffusers.WanVACEPipeline if arch == "wan_vace" else diffusers.WanImageToVideoPipeline


def targets(arch: str) -> dict[str, tuple[int, int]]:
    """``{layer name: (in_features, out_features)}`` of the layers a LoRA of the tiny ``arch`` adapts (read from the
    tiny model's transformer, built from its config on the meta device)."""
    import json

    import diffusers
    import torch

    from models.tiny import ensure as ensure_model

    _pipeline_class(arch)
    folder = ensure_model(arch) / "transformer"
    cls = getattr(diffusers, json.loads((folder / "config.json").read_text())["_class_name"])
    with torch.device("meta"):
        transformer = cls.from_config(cls.load_config(folder))
    found = {}
    for name, module in transformer.named_modules():
        parts = name.split(".", 2)
        if parts[0] == "blocks" and len(parts) == 3 and parts[2] in TARGETS and isinstance(module, torch.nn.Linear):
            found[name] = (module.in_features, module.out_features)
    return found


def build(folder: Path, arch: str = "wan_vace", *, rank: int = 4, seed: int = 0, std: float = 0.5) -> Path:
    """Write a random rank-``rank`` LoRA of the tiny ``arch`` to ``folder/WEIGHT_NAME`` and return the file. ``lora_A``
    is scaled by 1/sqrt(in) and ``lora_B`` by ``std``/sqrt(rank), so at scale 1 each adapted layer's output moves by
    about ``std`` times its input's size."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, (fan_in, fan_out) in sorted(targets(arch).items()):
        layers[f"{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
        layers[f"{name}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * std / rank**0.5
    metadata = {"r": rank, "lora_alpha": rank, "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in layers})}
    _pipeline_class(arch).save_lora_weights(folder, transformer_lora_layers=layers, weight_name=WEIGHT_NAME,
                                            transformer_lora_adapter_metadata=metadata)
    return Path(folder) / WEIGHT_NAME


def ensure(arch: str) -> Path:
    """The folder of the default tiny LoRA of ``arch`` (``WEIGHT_NAME`` inside), built now if this machine has none."""
    from models.tiny import built_once

    _pipeline_class(arch)
    return built_once(f"{arch}-lora-v{VERSION}", VERSION, lambda folder: build(folder, arch))
