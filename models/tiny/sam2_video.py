"""Tiny random-weight SAM2 video models for the ``tiny`` profile.

``build`` writes a transformers ``Sam2VideoModel`` + ``Sam2VideoProcessor`` (the real architecture shrunk: a
5-block Hiera at 128 px, 128-wide neck, prompt encoder, mask decoder and memory attention; the memory encoder
keeps its 64 channels, which the memory attention hard-codes). ``build_meta`` writes a random-weight checkpoint
of Meta's ``sam2`` package for its ``sam2.1_hiera_t`` config (Meta's configs only work at 1024 px, so this one
is full size: about 39M parameters, seconds per frame on CPU) plus the ``sam2_meta.json`` that
``stages.track`` reads for local Meta model folders.
"""

from __future__ import annotations

import json
from pathlib import Path

VERSION = "1"

IMAGE_SIZE = 128
WIDTH = 128  # every 256-wide module of the real model
MEMORY_CHANNELS = 64  # Sam2VideoMemoryAttention hard-codes kv_in_dim=64
META_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
META_MANIFEST = "sam2_meta.json"


def build(folder: Path) -> None:
    from transformers import Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor
    from transformers.models.sam2_video.configuration_sam2_video import (
        Sam2VideoMaskDecoderConfig,
        Sam2VideoPromptEncoderConfig,
    )
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    dims = [12, 24, 48, 96]
    backbone = Sam2HieraDetConfig(
        hidden_size=dims[0],
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[8, 4, 4, 4],
        global_attention_blocks=[3],  # second block of stage 3: a global block may not open a stage
    )
    stride = 4  # the patch embedding's stride; each later stage halves the feature map
    feature_sizes = [[IMAGE_SIZE // (stride * 2**i)] * 2 for i in range(3)]
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=dims[::-1],
        backbone_feature_sizes=feature_sizes,
        fpn_hidden_size=WIDTH,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=WIDTH, image_size=IMAGE_SIZE),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=WIDTH, mlp_dim=256, iou_head_hidden_dim=WIDTH),
        image_size=IMAGE_SIZE,
        memory_attention_hidden_size=WIDTH,
        memory_attention_num_layers=2,
        memory_attention_feed_forward_hidden_size=256,
        memory_attention_rope_feat_sizes=[IMAGE_SIZE // 16] * 2,
        memory_encoder_hidden_size=WIDTH,
        memory_encoder_output_channels=MEMORY_CHANNELS,
        mask_downsampler_embed_dim=WIDTH,
        memory_fuser_embed_dim=WIDTH,
        memory_fuser_intermediate_dim=256,
    )
    model = Sam2VideoModel(config).eval()
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=size, mask_size={"height": IMAGE_SIZE // 4, "width": IMAGE_SIZE // 4}),
        video_processor=Sam2VideoVideoProcessor(size=size),
        target_size=IMAGE_SIZE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def build_meta(folder: Path) -> None:
    """A random-weight ``sam2.1_hiera_t`` checkpoint for Meta's ``build_sam2_video_predictor(config, ckpt)``."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    folder.mkdir(parents=True, exist_ok=True)
    model = build_sam2_video_predictor(META_CONFIG, None, device="cpu")
    torch.save({"model": model.state_dict()}, folder / "model.pt")
    (folder / META_MANIFEST).write_text(json.dumps({"config": META_CONFIG, "checkpoint": "model.pt"}))
