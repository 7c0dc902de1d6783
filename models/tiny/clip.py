"""Tiny random-weight CLIP (``CLIPModel`` + ``CLIPProcessor``) for the judge's temporal consistency and text
alignment.

Same architecture as ``openai/clip-vit-large-patch14`` (ViT image tower, causal text transformer, projections
into one embedding space), shrunk to 32 wide and 2 layers at 56 px. The tokenizer is CLIP's byte-level BPE with
no merges: every character is a token (with ``</w>`` at word ends), which is enough to exercise the real
tokenizer, padding, truncation at 77 tokens and end-of-text pooling.
"""

from __future__ import annotations

from pathlib import Path

VERSION = "1"

IMAGE_SIZE = 56


def _tokenizer():  # noqa: ANN202 - a CLIPTokenizer
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for char in alphabet:
        vocab.setdefault(char, len(vocab))
    for char in alphabet:
        vocab.setdefault(char + "</w>", len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "projection_dim": 32,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": IMAGE_SIZE, "patch_size": 14, "projection_dim": 32,
        },
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
