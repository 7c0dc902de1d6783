"""Tiny random-weight Wan2.1 I2V (``WanImageToVideoPipeline``: I2V transformer, Wan VAE, UMT5 text encoder, T5
tokenizer, CLIP vision image encoder and its image processor).

The components mirror ``Wan-AI/Wan2.1-I2V-14B-720P-Diffusers`` scaled down: the transformer takes the 36 input
channels of I2V (16 noise + 4 first-frame mask + 16 first-frame latents) and has the image-conditioning parts
(``image_dim`` = the CLIP hidden size, ``added_kv_proj_dim`` = the transformer width, as in the real 1280 / 5120),
with the dummy sizes of diffusers' own ``tests/pipelines/wan/test_wan_image_to_video.py`` and the real
``rope_max_seq_len`` (1024, so it also runs at 832x480 and 1280x720). The image encoder is a
``CLIPVisionModelWithProjection`` with the real ViT-H/14 input geometry (224 px, patch 14: 257 tokens) and the
default ``CLIPImageProcessor`` (the real checkpoint's resize/crop/normalisation). The scheduler is the real
checkpoint's (``UniPCMultistepScheduler`` with flow sigmas, ``flow_shift`` 3.0, as diffusers'
``scripts/convert_wan_to_diffusers.py`` writes it for Wan2.1 I2V). The text encoder and tokenizer are those of
:mod:`models.tiny.wan_vace` (same in-memory vocabulary).
"""

from __future__ import annotations

from pathlib import Path

from models.tiny.wan_vace import vocabulary

VERSION = "1"


def build(folder: Path) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        T5Tokenizer,
        UMT5Config,
        UMT5EncoderModel,
    )

    tokenizer = T5Tokenizer(vocab=vocabulary(), extra_ids=100, model_max_length=512)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0,
    )).eval()
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
        image_size=224, patch_size=14, hidden_act="gelu",
    )).eval()
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
    ).eval()
    heads, head_dim = 2, 12
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=36,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        image_dim=image_encoder.config.hidden_size, added_kv_proj_dim=heads * head_dim,
    ).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer,
        image_encoder=image_encoder, image_processor=CLIPImageProcessor(),
    )
    pipe.save_pretrained(folder)
