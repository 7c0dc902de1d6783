"""Tiny random-weight Depth Anything V2 (``DepthAnythingForDepthEstimation`` + ``DPTImageProcessor``).

Same architecture as ``depth-anything/Depth-Anything-V2-Large-hf`` (DINOv2 backbone, DPT neck and relative-depth
head with its final ReLU), shrunk: a 32-wide, 4-layer DINOv2 whose 4 layers feed the neck (the real model taps
layers 5, 12, 18, 24 of 24). The image processor is the real checkpoint's (``keep_aspect_ratio``,
``ensure_multiple_of`` 14, bicubic, ImageNet mean/std, no padding) with the resize target lowered from 518 to
126, so a 16:9 frame becomes 126x224. ``initializer_range`` is 0.15 instead of the real 0.02: with 0.02 the
random head's output is about 1e-7 (and partly clipped to 0 by the ReLU); with 0.15 it is O(1) and positive on
real footage, like a trained model's relative inverse depth.
"""

from __future__ import annotations

from pathlib import Path

VERSION = "1"

INPUT_SIZE = 126
"""The processor's resize target (the real checkpoints use 518); a multiple of the 14-pixel patch."""


def build(folder: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=INPUT_SIZE, patch_size=14,
        out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=32, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8, head_in_index=-1,
        depth_estimation_type="relative", initializer_range=0.15,
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    processor = DPTImageProcessor(
        do_resize=True, size={"height": INPUT_SIZE, "width": INPUT_SIZE}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225], do_pad=False,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
