"""Tiny random-weight Wan VACE (``WanVACEPipeline``: VACE transformer, Wan VAE, UMT5 text encoder, T5 tokenizer).

The transformer and VAE are the dummy components of diffusers' own ``tests/pipelines/wan/test_wan_vace.py``
(except ``rope_max_seq_len``, raised to the real 1024 so the tiny model also runs at 832x480). The scheduler is
the real checkpoint's (``UniPCMultistepScheduler`` with flow sigmas, ``flow_shift`` 3.0), so ``flow_shift``
overrides take the same path as on ``Wan-AI/Wan2.1-VACE-14B-diffusers``. The text encoder is a 32-wide
``UMT5EncoderModel`` (the transformer's ``text_dim``) with a T5 unigram tokenizer built from an in-memory
vocabulary of ``▁``-prefixed words and single characters (anything else becomes ``<unk>``).
"""

from __future__ import annotations

import string
from pathlib import Path

VERSION = "1"

_WORDS = """
a an the of on in with and or to at by from near next behind front left right top bottom small large big little
old young red blue green yellow white black brown gray grey orange pink purple dark light wooden metal plastic
dog cat horse cow sheep bird duck animal puppy person man woman boy girl child car truck bus bike boat ball toy
bag hat shirt chair table bench sofa bed lamp box tree flower plant grass rock stone wall door window house road
street water sky cloud snow sand floor ground field park room background empty scene is are walking running
""".split()
_CHARS = list(string.ascii_letters + string.digits + string.punctuation)


def vocabulary() -> list[tuple[str, float]]:
    """(piece, log-probability) in T5 order: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then the pieces; the
    tokenizer appends its 100 ``<extra_id_*>`` sentinels."""
    pieces = [("▁", -2.0)]
    pieces += [(f"▁{word}", -5.0) for word in _WORDS]
    pieces += [(f"▁{char}", -9.0) for char in _CHARS] + [(char, -10.0) for char in _CHARS]
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces]


def build(folder: Path) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline, WanVACETransformer3DModel
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    tokenizer = T5Tokenizer(vocab=vocabulary(), extra_ids=100, model_max_length=512)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0,
    )).eval()
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
    ).eval()
    transformer = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024, vace_layers=[0, 2], vace_in_channels=96,
    ).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
    )
    pipe = WanVACEPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer,
    )
    pipe.save_pretrained(folder)
