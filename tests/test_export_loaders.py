"""A real small export read back with the loaders users have, every field of every pair checked against what ffp
wrote: Hugging Face ``datasets`` (map-style and streaming), webdataset with a torch ``DataLoader`` (two workers),
Ray Data, and DuckDB over ``dataset.parquet`` and the manifests; plus the dataset card's own snippet.

The run is ingest -> augment -> export on the demo VOS sequences (6 pairs in 2 shards), with a second export of the
same pairs with ``mask_format: npz``. "What ffp wrote" is the upstream stages' tars: ``src.mp4`` is augment's
``aug.mp4`` (its bytes, and its frames as ffp's own decoder gives them), ``edit.mp4`` ingest's ``clip.mp4``,
``edit0.png`` ingest's ``frame0.png`` (its pixels), the mask augment's ``aug_mask.npz`` (bit for bit, read one frame
at a time from ``mask.mkv``), and the ``json`` card agrees with the export's manifest row."""

from __future__ import annotations

import io
import json
import os
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from manifests.shards import open_shard
from manifests.storage import Storage
from media.arrays import read_npz
from media.mask_video import iter_masks, pair_masks
from media.png import read_png
from media.video_io import decode_frames
from tests.conftest import FAST_INGEST, make_config, manifest_rows, run_local

PAIRS = 6
FPS = 12  # not the default 16: the mask must take the clip's rate
INGEST = {**FAST_INGEST, "fps": FPS}
CLIP = (INGEST["num_frames"], INGEST["height"], INGEST["width"])


@dataclass
class Expected:
    """One pair as ffp wrote it upstream of the export."""

    src: bytes
    edit: bytes
    src_frames: np.ndarray
    edit_frames: np.ndarray
    edit0: np.ndarray
    masks: np.ndarray
    mask_npz: bytes
    row: dict[str, Any]  # the export's manifest row
    card: dict[str, Any]  # the export's json, as written


@dataclass
class Export:
    run: Path
    tars: list[str]
    pairs: dict[str, Expected]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, demo_vos: Path) -> Export:
    run_dir = tmp_path_factory.mktemp("loaders") / "run"
    config = make_config(
        run_dir,
        inputs=[{"kind": "vos", "path": str(demo_vos), "fps": 16}],
        stages={
            "ingest": {"type": "ingest", "params": INGEST},
            "augment": {"type": "synth_augment", "params": {"seed": 0, "crf": 30, "preset": "ultrafast"}},
            "export": {"type": "export", "params": {"dataset_name": "loader-pairs"}},
            "export_npz": {"type": "export", "params": {"folder": "export-npz", "mask_format": "npz"}},
        },
        tracks={"mkv": ["ingest", "augment", "export"], "npz": ["ingest", "augment", "export_npz"]},
    )
    runner = run_local(config, finalize=True)
    storage = Storage(str(run_dir))
    graph = runner.graph

    def upstream(stage: str, sid: str, field: str) -> bytes:
        (row,) = [r for r in manifest_rows(run_dir, stage) if r["sample_id"] == sid]
        return open_shard(storage, graph.nodes[stage].tar_path(row["shard"])).read(sid, field)

    pairs = {}
    for row in (r for r in manifest_rows(run_dir, "export") if r["status"] == "ok"):
        sid = row["sample_id"]
        src, edit = upstream("augment", sid, "aug.mp4"), upstream("ingest", sid, "clip.mp4")
        mask_npz = upstream("augment", sid, "aug_mask.npz")
        pairs[sid] = Expected(
            src=src, edit=edit, src_frames=decode_frames(src), edit_frames=decode_frames(edit),
            edit0=read_png(upstream("ingest", sid, "frame0.png")), masks=read_npz(mask_npz)["masks"],
            mask_npz=mask_npz, row=row, card=json.loads(upstream("export", sid, "json")),
        )
    assert len(pairs) == PAIRS
    tars = sorted(str(p) for p in (run_dir / "export").glob("shard-*.tar"))
    assert len(tars) == 2
    return Export(run_dir, tars, pairs)


def check_pair(expected: Expected, *, src: bytes, edit: bytes, edit0: np.ndarray, mask: bytes,
               card: Mapping[str, Any]) -> None:
    """One pair as a loader gave it, against what ffp wrote."""
    assert src == expected.src and edit == expected.edit  # passed through, not re-encoded
    assert np.array_equal(decode_frames(src), expected.src_frames)
    assert np.array_equal(decode_frames(edit), expected.edit_frames)
    assert expected.src_frames.shape == (*CLIP, 3)
    assert np.array_equal(np.asarray(edit0), expected.edit0)
    frames = 0
    for t, frame in enumerate(iter_masks(mask)):  # lazily, frame by frame
        assert np.array_equal(frame, expected.masks[t]), f"mask frame {t}"
        frames += 1
    assert frames == len(expected.masks) == CLIP[0]
    assert dict(card) == expected.card
    row = expected.row
    assert card["sample_id"] == row["sample_id"]
    for column in ("task", "instruction", "source_id", "num_frames", "width", "height", "src_bytes", "edit_bytes"):
        assert card[column] == row[column], column
    assert card["provenance"]["fingerprints"] == json.loads(row["lineage"])


def test_the_export_writes_mask_mkv_made_from_the_upstream_masks(exported):
    """The mask member is mask.mkv (no mask.npz), bit-identical to the upstream stage's mask, and its frame t is
    the one shown at src.mp4's frame t time (the clip's rate, not a default)."""
    for sid, expected in exported.pairs.items():
        reader = open_shard(Storage(str(exported.run)), f"export/shard-{expected.row['shard']:06d}.tar")
        pair = reader.sample(sid)
        assert set(pair) == {"src.mp4", "edit.mp4", "edit0.png", "mask.mkv", "json"}
        assert np.array_equal(pair_masks(pair), expected.masks)
        assert expected.masks.any() and set(np.unique(expected.masks)) <= {0, 255}
        mask_starts, src_times = _starts(pair["mask.mkv"]), _starts(pair["src.mp4"])
        assert len(mask_starts) == len(src_times) == CLIP[0]
        assert src_times[1] == Fraction(1, FPS)
        for t, when in enumerate(src_times):
            assert max(i for i, start in enumerate(mask_starts) if start <= when) == t


def _starts(data: bytes) -> list[Fraction]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return [frame.pts * frame.time_base for frame in container.decode(stream)]


def test_mask_format_npz_writes_the_upstream_npz_unchanged(exported):
    storage = Storage(str(exported.run))
    rows = [r for r in manifest_rows(exported.run, "export_npz") if r["status"] == "ok"]
    assert sorted(r["sample_id"] for r in rows) == sorted(exported.pairs)
    for row in rows:
        pair = open_shard(storage, f"export-npz/shard-{row['shard']:06d}.tar").sample(row["sample_id"])
        assert set(pair) == {"src.mp4", "edit.mp4", "edit0.png", "mask.npz", "json"}
        assert pair["mask.npz"] == exported.pairs[row["sample_id"]].mask_npz
        assert np.array_equal(pair_masks(pair), exported.pairs[row["sample_id"]].masks)
    card = (exported.run / "export-npz" / "README.md").read_text()
    assert "mask.npz" in card and "mask.mkv" not in card


# ---- Hugging Face datasets -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``datasets``, offline, its caches in a temporary folder (set before it is imported: it reads them then)."""
    home = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"),
                            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
            patch.setenv(name, value)
        import datasets

        yield datasets


def test_hugging_face_datasets_types_the_mask_as_video_and_reads_every_pair(exported, hf_datasets, tmp_path):
    """``load_dataset`` on the export folder types mask.mkv as a ``Video`` like the clips (an npz became nested Python
    lists); ``Video(decode=False)`` gives the bytes, decoded here frame by frame (``Video()`` itself needs
    torchcodec, which has no CPU build for this torch). The folder is loaded as it is: its card names the shards
    and declares the json card's types, which ``datasets`` once inferred from the first 5 pairs and so typed a
    field null in all of them (``donor_id`` of fill pairs) null, failing at the first pair that set it."""
    datasets = hf_datasets
    ds = datasets.load_dataset(str(exported.run / "export"), split="train", cache_dir=str(tmp_path / "cache"))
    card = ds.features["json"]
    for column in ("donor_id", "caption_src", "label"):  # null in the first pairs, or in all: declared, not inferred
        assert card[column] == datasets.Value("string"), (column, card[column])
    assert card["scores"]["leak"] == datasets.Value("float32") and card["num_frames"] == datasets.Value("int16")
    for member in ("src.mp4", "edit.mp4", "mask.mkv"):
        assert isinstance(ds.features[member], datasets.Video), (member, ds.features[member])
    assert isinstance(ds.features["edit0.png"], datasets.Image)
    for member in ("src.mp4", "edit.mp4", "mask.mkv"):
        ds = ds.cast_column(member, datasets.Video(decode=False))
    assert ds.num_rows == PAIRS
    seen = []
    for row in ds:
        seen.append(row["__key__"])
        assert row["mask.mkv"]["path"] == f"{row['__key__']}.mask.mkv"
        check_pair(exported.pairs[row["__key__"]], src=row["src.mp4"]["bytes"], edit=row["edit.mp4"]["bytes"],
                   edit0=np.asarray(row["edit0.png"]), mask=row["mask.mkv"]["bytes"], card=row["json"])
    assert sorted(seen) == sorted(exported.pairs)


def test_hugging_face_datasets_streaming_reads_every_pair(exported, hf_datasets):
    stream = hf_datasets.load_dataset(str(exported.run / "export"), split="train", streaming=True)
    assert isinstance(stream.features["mask.mkv"], hf_datasets.Video)
    seen = []
    for row in stream.decode(False):  # every media member as {"bytes", "path"}
        seen.append(row["__key__"])
        check_pair(exported.pairs[row["__key__"]], src=row["src.mp4"]["bytes"], edit=row["edit.mp4"]["bytes"],
                   edit0=read_png(row["edit0.png"]["bytes"]), mask=row["mask.mkv"]["bytes"], card=row["json"])
    assert sorted(seen) == sorted(exported.pairs)


# ---- webdataset + torch DataLoader ---------------------------------------------------------------------------
def decode_pair(pair: dict[str, Any]) -> dict[str, Any]:
    """What a training job's worker does with a pair: decode everything, the mask one frame at a time."""
    return {
        "key": pair["__key__"],
        "src": decode_frames(pair["src.mp4"]), "edit": decode_frames(pair["edit.mp4"]),
        "src_bytes": pair["src.mp4"], "edit_bytes": pair["edit.mp4"],
        "edit0": read_png(pair["edit0.png"]),
        "masks": np.stack(list(iter_masks(pair["mask.mkv"]))), "mask_bytes": pair["mask.mkv"],
        "card": json.loads(pair["json"]), "worker": os.getpid(),
    }


def test_webdataset_and_a_dataloader_with_two_workers_read_every_pair_once(exported):
    import torch
    import webdataset as wds

    dataset = wds.WebDataset(exported.tars, shardshuffle=False).map(decode_pair)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    got = list(loader)
    assert sorted(item["key"] for item in got) == sorted(exported.pairs)  # each pair once: shards split by worker
    assert len({item["worker"] for item in got}) == 2
    for item in got:
        expected = exported.pairs[item["key"]]
        assert np.array_equal(item["src"].numpy(), expected.src_frames)
        assert np.array_equal(item["edit"].numpy(), expected.edit_frames)
        assert np.array_equal(item["masks"].numpy(), expected.masks)
        check_pair(expected, src=item["src_bytes"], edit=item["edit_bytes"], edit0=item["edit0"].numpy(),
                   mask=item["mask_bytes"], card=item["card"])


def test_the_dataset_cards_snippet_reads_every_mask(exported, monkeypatch):
    """The README's "Read it" code, run as written (from the run folder: its paths are run-relative), with its
    ``...`` made to keep what it read."""
    card = (exported.run / "export" / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert code.count("\n            ...\n") == 1
    code = code.replace("\n            ...\n", "\n            seen.setdefault(pair['__key__'], []).append(mask)\n")
    seen: dict[str, list[np.ndarray]] = {}
    monkeypatch.chdir(exported.run)
    exec(compile(code, "README.md", "exec"), {"seen": seen})  # noqa: S102 - the card's own snippet
    assert sorted(seen) == sorted(exported.pairs)
    for key, frames in seen.items():
        assert np.array_equal(np.stack(frames), exported.pairs[key].masks)
    assert "Video(decode=False)" in card


# ---- DuckDB --------------------------------------------------------------------------------------------------
def test_duckdb_reads_dataset_parquet_and_the_manifests(exported):
    import duckdb

    run = exported.run
    compared = ("task", "instruction", "source_id", "source_uri", "num_frames", "width", "height", "augmentation",
                "lineage", "src_bytes", "edit_bytes")
    dataset = duckdb.sql(f"select sample_id, status, fps, {', '.join(compared)} "
                         f"from read_parquet('{run}/export/dataset.parquet') order by sample_id")
    rows = [dict(zip(dataset.columns, values, strict=True)) for values in dataset.fetchall()]
    assert [r["sample_id"] for r in rows] == sorted(exported.pairs)
    for row in rows:
        expected = exported.pairs[row["sample_id"]]
        assert row["status"] == "ok"
        for column in compared:
            assert row[column] == expected.row[column], column
        assert row["src_bytes"] == len(expected.src) and row["edit_bytes"] == len(expected.edit)
        assert (row["num_frames"], row["height"], row["width"]) == expected.masks.shape == CLIP
        assert row["fps"] == pytest.approx(FPS)
        assert expected.card["task"] == row["task"] and expected.card["instruction"] == row["instruction"]
    manifests = f"read_parquet('{run}/manifests/**/*.parquet', union_by_name=true, hive_partitioning=true)"
    lineage = duckdb.sql(
        f"select d.sample_id, list(m.stage order by m.stage), list(m.status order by m.stage) "
        f"from read_parquet('{run}/export/dataset.parquet') d join {manifests} m using (sample_id) "
        "where m.stage in ('ingest', 'augment', 'export') group by all order by 1"
    ).fetchall()
    assert lineage == [(sid, ["augment", "export", "ingest"], ["ok", "ok", "ok"]) for sid in sorted(exported.pairs)]


# ---- Ray Data (last: its Ray stays up until the module ends) --------------------------------------------------
def mask_summary(row: dict[str, Any]) -> dict[str, Any]:
    """In a Ray worker: the mask decoded frame by frame, as CRCs (what the test compares)."""
    crcs = [zlib.crc32(frame) for frame in iter_masks(row["mask.mkv"])]
    return {"key": row["__key__"], "crcs": crcs}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its settings
def test_ray_data_reads_every_pair(exported, ray_session):
    import ray

    rows = ray.data.read_webdataset(exported.tars).take_all()
    assert sorted(row["__key__"] for row in rows) == sorted(exported.pairs)
    for row in rows:  # Ray decodes png (to an array) and json; video members stay bytes
        check_pair(exported.pairs[row["__key__"]], src=row["src.mp4"], edit=row["edit.mp4"], edit0=row["edit0.png"],
                   mask=row["mask.mkv"], card=row["json"])
    summaries = ray.data.read_webdataset(exported.tars).map(mask_summary).take_all()
    assert sorted(s["key"] for s in summaries) == sorted(exported.pairs)
    for summary in summaries:
        masks = exported.pairs[summary["key"]].masks
        assert list(summary["crcs"]) == [zlib.crc32(np.ascontiguousarray(frame)) for frame in masks]
