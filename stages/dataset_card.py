"""The export's dataset card (``<folder>/README.md``): what the pairs are, how many of each task, where they came
from, how to read them, and a YAML header that Hugging Face ``datasets`` reads.

The header names the shards as the folder's data files and declares every member's features, the json card's
included. Without it ``datasets`` infers the card's types from the first 5 pairs of the first tar, and a field null
in all of them (``donor_id`` on a synthetic track whose first pairs are fills) is typed null and fails the load at
the first pair that sets it. The declared types are the export's manifest columns (declared by the stages, not
inferred), and for the card's provenance, which is free-form, the Arrow type of every pair's provenance together.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa
import yaml

from manifests.manifest import BASE_COLUMNS, Status
from media.mask_video import MKV_MEMBER, NPZ_MEMBER
from stages.judge import CHECKS, SCORE_COLUMNS

log = logging.getLogger("ffp.export")

PROVENANCE_COLUMNS = ("lineage", "models")
"""Export columns that the json card carries inside ``provenance`` (as objects), not at its top level."""
SCORES = dict(zip(CHECKS, SCORE_COLUMNS))
"""The judge's check -> its column: the json card carries the columns inside ``scores``, keyed by check."""

_DTYPES = {"float": "float32", "double": "float64", "halffloat": "float16"}  # Arrow's names -> datasets' names


def card_columns(columns: list[str]) -> list[str]:
    """Those of an export's columns that its json card holds at the top level, every one in every pair (null where
    the track does not make it), so that the card has one type across pairs and tracks."""
    return [c for c in columns if c not in PROVENANCE_COLUMNS and c not in SCORE_COLUMNS]


def pair_card(sample_id: str, columns: dict[str, Any], names: list[str], provenance: dict[str, Any]) -> dict[str, Any]:
    """The json card of one pair: ``names`` (every export column), captions, every check's score and provenance."""
    return {
        "sample_id": sample_id,
        **{name: columns.get(name) for name in card_columns(names)},
        "captions": {"src": columns.get("caption_src"), "edit": columns.get("caption_edit")},
        "scores": {check: columns.get(column) for check, column in SCORES.items()},
        "provenance": provenance,
    }


def card_features(schema: pa.Schema, rows: list[dict[str, Any]], fields: dict[str, Any],
                  mask_format: str) -> list[dict[str, Any]] | None:
    """The features of every pair member in ``datasets``' YAML form, or None where the provenance has no single
    Arrow type (then ``datasets`` infers, as without a header)."""
    names = [f.name for f in schema if f.name not in BASE_COLUMNS]
    try:
        provenance = pa.array([{"fingerprints": json.loads(lineage), "models": json.loads(models), "fields": fields}
                               for lineage, models in {(r["lineage"] or "{}", r["models"] or "{}") for r in rows}])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        log.warning("the dataset card declares no features: the pairs' provenance has no single type (%s)", exc)
        return None
    card = pa.struct([
        pa.field("sample_id", pa.string()),
        *[schema.field(name) for name in card_columns(names)],
        pa.field("captions", pa.struct([pa.field("src", pa.string()), pa.field("edit", pa.string())])),
        pa.field("scores", pa.struct([pa.field(check, schema.field(column).type) for check, column in SCORES.items()])),
        pa.field("provenance", provenance.type),
    ])
    mask = ({"name": MKV_MEMBER, "dtype": "video"} if mask_format == "mkv" else  # datasets decodes an npz to lists
            {"name": NPZ_MEMBER, **_feature(pa.struct([pa.field("masks", pa.list_(pa.list_(pa.list_(pa.uint8()))))]))})
    return [
        {"name": "src.mp4", "dtype": "video"}, {"name": "edit.mp4", "dtype": "video"},
        {"name": "edit0.png", "dtype": "image"}, mask, {"name": "json", **_feature(card)},
        {"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
    ]


def _feature(arrow: pa.DataType) -> dict[str, Any]:
    """One Arrow type as a ``datasets`` feature in its YAML form (``Features._to_yaml_list``)."""
    if pa.types.is_struct(arrow):
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in arrow]}
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        item = _feature(arrow.value_type)
        kind = "list" if pa.types.is_list(arrow) else "large_list"
        return {kind: item["dtype"] if list(item) == ["dtype"] else item.get("struct", item)}
    return {"dtype": _DTYPES.get(str(arrow), str(arrow))}


def dataset_card(dataset: str, folder: str, everything: pa.Table, shards: int, select: str,
                 fields: dict[str, Any], mask_format: str = "mkv") -> str:
    every_row: list[dict[str, Any]] = everything.to_pylist() if everything.num_rows else []
    rows = [row for row in every_row if row["status"] == Status.OK]
    by_task: dict[str, list[int]] = {}  # task -> [written, left out by the judge, left out by a reviewer]
    for row in every_row:
        counts = by_task.setdefault(row.get("task") or "?", [0, 0, 0])
        if row["status"] == Status.OK:
            counts[0] += 1
        elif row["status"] == Status.FILTERED:
            counts[2 if row.get("label") else 1] += 1
    total = sum((row["src_bytes"] or 0) + (row["edit_bytes"] or 0) for row in rows)
    lineages = sorted({row["lineage"] for row in rows if row["lineage"]})
    header: dict[str, Any] = {"configs": [{"config_name": "default",
                                           "data_files": [{"split": "train", "path": "shard-*.tar"}]}]}
    features = card_features(everything.schema, rows, fields, mask_format) if rows else None
    if features is not None:
        header["dataset_info"] = {"features": features}
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        "---",
        f"# {dataset}",
        "",
        f"Made by ffp: {len(rows)} pairs in {shards} shards "
        f"({total / 1e6:.1f} MB of video).",
        "",
        f"Pairs written: {select} ones (a reviewer's label overrules the judge's verdict).",
        "",
        "| task | pairs | left out by the judge | left out by review |",
        "|---|---|---|---|",
        *[f"| {task} | {n[0]} | {n[1]} | {n[2]} |" for task, n in sorted(by_task.items())],
        "",
        "Each pair: `src.mp4` (model input), `edit.mp4` (target), `edit0.png` (edited first frame), "
        + ("`mask.mkv` (per-frame edit mask, uint8 0/255, one frame per clip frame: a lossless grey FFV1 video; every "
           "loader hands it over as video bytes, decode it frame by frame like the clips)" if mask_format == "mkv" else
           "`mask.npz` (per-frame edit mask, uint8 0/255, T x H x W: `np.load(..., allow_pickle=False)['masks']`)")
        + ", `json` (task, instruction, captions, scores, provenance: every pair has every key, null where its "
        "track does not make it). Every pair with its columns: `dataset.parquet`.",
        "",
        "## Provenance (stage fingerprints)",
        "",
        *[f"- `{lineage}`" for lineage in lineages],
        "",
        "## Read it",
        "",
        "```python",
        "import io",
        "",
        "import av  # PyAV" if mask_format == "mkv" else "import numpy as np",
        "import webdataset as wds",
        "",
        f"for pair in wds.WebDataset('{folder}/shard-{{000000..{max(shards - 1, 0):06d}}}.tar', shardshuffle=False):",
        "    src, edit, card = pair['src.mp4'], pair['edit.mp4'], pair['json']  # bytes",
        *([
            "    with av.open(io.BytesIO(pair['mask.mkv'])) as video:  # one frame at a time, bit-exact",
            "        for mask in (frame.to_ndarray() for frame in video.decode(video=0)):  # (H, W) uint8",
            "            ...",
        ] if mask_format == "mkv" else [
            "    masks = np.load(io.BytesIO(pair['mask.npz']), allow_pickle=False)['masks']  # (T, H, W) uint8",
        ]),
        "```",
        "",
        "With Hugging Face `datasets`, load this folder: `load_dataset('RUN/" + folder + "', split='train')` reads the",
        "shards with the features declared above (the json card's types included: `datasets` would otherwise infer",
        "them from the first 5 pairs and fail on a field null in all of them).",
        *([
            "It types `mask.mkv` as a `Video` like the clips: `ds.cast_column('mask.mkv', Video(decode=False))` gives",
            "its bytes to decode as above (`Video()` decodes with torchcodec where it is installed). Frame `t` of",
            "`src.mp4` has its mask at frame index `t`, which is also the mask frame shown at `src.mp4`'s frame time.",
        ] if mask_format == "mkv" else []),
        "",
    ]
    return "\n".join(lines)
