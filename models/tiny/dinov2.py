"""Tiny random-weight DINOv2 (``Dinov2Model`` + its ``BitImageProcessor``) for the judge's temporal consistency.

Same architecture as ``facebook/dinov2-base`` (ViT with register-free patch tokens, layer scale, CLS pooling),
32 wide and 2 layers. The image processor is the real checkpoint's (resize the short side to 256, centre crop
224, ImageNet mean/std) lowered to 70/56 px.
"""

from __future__ import annotations

from pathlib import Path

VERSION = "1"


def build(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=56,
                          patch_size=14)
    model = Dinov2Model(config).eval()
    processor = BitImageProcessor(
        do_resize=True, size={"shortest_edge": 70}, resample=3, do_center_crop=True,
        crop_size={"height": 56, "width": 56}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
