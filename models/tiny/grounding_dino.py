"""Tiny random-weight Grounding DINO (``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor``).

Same architecture as ``IDEA-Research/grounding-dino-*`` (Swin backbone, BERT text encoder, deformable
encoder/decoder), shrunk so one CPU forward pass takes milliseconds. The BERT vocabulary is an in-memory
word list (words outside it become ``[UNK]``); the image processor resizes to a short side of 256.
"""

from __future__ import annotations

from pathlib import Path

VERSION = "1"

_WORDS = """
a an the of on in with and or to at by from near next behind front left right top bottom small large big little
old young red blue green yellow white black brown gray grey orange pink purple dark light wooden metal plastic
dog cat horse cow sheep bird duck goose chicken fish animal puppy kitten bear deer monkey elephant zebra giraffe
person man woman boy girl child kid baby people player rider skier surfer dancer
car truck bus bike bicycle motorcycle boat ship train plane airplane vehicle wheel
ball toy bag backpack hat cap shirt jacket dress shoe shoes umbrella bottle cup glass bowl plate chair table bench
sofa couch bed lamp box phone laptop book sign flag kite frisbee skateboard surfboard board racket bat
tree flower plant grass rock stone wall door window house building road street water sky cloud snow sand
""".split() + ["##s", "##es", "##ing", "##ed"]

# Grounding DINO finds phrase boundaries by the token ids of bert-base-uncased ([CLS] 101, [SEP] 102, "." 1012,
# "?" 1029, [PAD] 0; see SPECIAL_TOKENS in modeling_grounding_dino), so the tiny vocabulary keeps those ids.
_FIXED = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "!": 999, "'": 1005, ",": 1010,
          "-": 1011, ".": 1012, "?": 1029}


def vocabulary() -> dict[str, int]:
    """Token -> id: the fixed ids above, ``[unusedN]`` in the gaps, then the word list."""
    first_word = max(_FIXED.values()) + 1
    by_id = {i: f"[unused{i}]" for i in range(first_word)}
    by_id.update({i: token for token, i in _FIXED.items()})
    by_id.update({first_word + i: word for i, word in enumerate(_WORDS)})
    return {token: i for i, token in by_id.items()}


def build(folder: Path) -> None:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = vocabulary()
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=64)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 256, "longest_edge": 384})
    backbone = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                          out_features=["stage2", "stage3", "stage4"], drop_path_rate=0.0)
    text = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, num_queries=50, max_text_len=64,
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, fusion_droppath=0.0,
        disable_custom_kernels=True,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(folder)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
