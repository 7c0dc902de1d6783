"""Image inputs of the style track: listing and pairing (folders, pair tables), decoding untrusted images, and
the ingest_images and style_pairs stages on the real style paintings and frames of the real clips."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from manifests.manifest import Status
from media.images import ImageError, ImageTooSmall, decode_image, fit_within
from media.png import read_png
from media.sources import InputListError, list_inputs
from pipeline.config import InputSpec
from stages.ingest_images import IngestImagesParams, list_pairs
from stages.style_pairs import StylePairs, StylePairsParams, pick_styles, style_id_for
from tests.conftest import media, sample_of, stage_of

LIMITS = {"min_side": 64, "max_side": 512}


def images(kind: str = "images", **spec: str) -> InputSpec:
    return InputSpec(kind=kind, **spec)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def styles() -> Path:
    return media("style_refs")


@pytest.fixture(scope="module")
def contents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames 0 and 60 of the two SAM2 gallery clips as JPEG content images (1280x720)."""
    folder = tmp_path_factory.mktemp("content")
    for clip in ("01_dog", "02_cups"):
        with av.open(str(media("sam2_gallery", f"{clip}.mp4"))) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in (0, 60):
                    frame.to_image().save(folder / f"{clip}_{i:03d}.jpg", quality=92)
                if i == 60:
                    break
    return folder


# Decoding untrusted images -----------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_decode_applies_exif_orientation_and_composites_transparency_on_white() -> None:
    wide = Image.new("RGB", (80, 40), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert decode_image(encoded(wide, "JPEG", exif=exif)).shape == (80, 40, 3)
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert (decode_image(encoded(clear)) == 255).all()
    gray = decode_image(encoded(Image.new("L", (20, 30), 77)))
    assert gray.shape == (30, 20, 3) and (gray == 77).all()


def test_decode_refuses_garbage_truncated_huge_and_tiny_images() -> None:
    data = encoded(Image.new("RGB", (300, 200), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(b"<html>not an image</html>")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(data[: len(data) // 3])
    with pytest.raises(ImageError, match="over max_pixels"):
        decode_image(data, max_pixels=300 * 200 - 1)
    with pytest.raises(ImageTooSmall, match="200"):
        decode_image(data, min_side=201)
    assert decode_image(data, min_side=200).shape == (200, 300, 3)


def test_fit_within_shrinks_keeping_the_aspect_and_never_enlarges() -> None:
    image = np.zeros((720, 1280, 3), np.uint8)
    assert fit_within(image, 640).shape == (360, 640, 3)
    assert fit_within(image, 2000) is image


# Listing and pairing ------------------------------------------------------------------------------------------


def test_each_content_image_gets_k_distinct_seeded_styles(contents: Path, styles: Path) -> None:
    specs = [images(path=str(contents)), images(path=str(styles), role="style")]
    one = list_pairs(specs, IngestImagesParams(styles_per_content=1, seed=3))
    assert len(one) == 4 and len({row["source_id"] for row in one}) == 4
    assert list_pairs(specs, IngestImagesParams(styles_per_content=1, seed=3)) == one
    both = list_pairs(specs, IngestImagesParams(styles_per_content=2))
    assert len(both) == 8  # two styles exist: every content image gets both
    by_content: dict[str, set[str]] = {}
    for row in both:
        by_content.setdefault(row["content_uri"], set()).add(row["style_uri"])
    assert all(len(s) == 2 for s in by_content.values())
    row = one[0]
    assert row["source_id"] == f"{row['source_id'].rsplit('-', 2)[0]}-{style_id_for(row['style_uri'])}"
    assert row["style_name"] in ("starry_night", "the_scream")


def test_a_content_images_styles_do_not_depend_on_the_other_content_images() -> None:
    styles = [f"s3://bucket/styles/{i:02d}.jpg" for i in range(20)]
    picks = [tuple(pick_styles(f"content-{i}", styles, 3, seed=7)) for i in range(50)]
    assert all(len(set(p)) == 3 for p in picks)
    assert len(set(picks)) > 40  # spread over the styles, not one fixed pick
    assert tuple(pick_styles("content-5", list(reversed(styles)) + styles[:2], 3, seed=7)) == picks[5]
    assert tuple(pick_styles("content-5", styles, 3, seed=8)) != picks[5]


def test_a_pair_table_gives_its_rows_with_relative_paths_and_optional_columns(tmp_path: Path, contents: Path,
                                                                               styles: Path) -> None:
    content = sorted(contents.iterdir())[0]
    (tmp_path / "pairs").mkdir()
    table = pa.table({
        "content": [str(content), str(content)],
        "style": ["../styles/a.png", str(styles / "the_scream.jpg")],
        "stylized": [None, str(content)],
        "style_name": ["ink", None],
    })
    pq.write_table(table, tmp_path / "pairs" / "pairs.parquet")
    rows = list_pairs([images("image_pairs", path=str(tmp_path / "pairs" / "pairs.parquet"))], IngestImagesParams())
    assert [r["style_uri"] for r in rows] == [str(tmp_path / "pairs" / "../styles/a.png"), str(styles / "the_scream.jpg")]
    assert [r["stylized_uri"] for r in rows] == [None, str(content)]
    assert [r["style_name"] for r in rows] == ["ink", "the_scream"]
    (tmp_path / "bad.csv").write_text("content,image\na.jpg,b.jpg\n")
    with pytest.raises(InputListError, match="no column 'style'"):
        list_pairs([images("image_pairs", path=str(tmp_path / "bad.csv"))], IngestImagesParams())


def test_input_kinds_go_to_their_own_source_stage(contents: Path, styles: Path) -> None:
    with pytest.raises(InputListError, match="content images need style images"):
        list_pairs([images(path=str(contents))], IngestImagesParams())
    with pytest.raises(InputListError, match="ingest_images reads inputs of kind images, image_pairs; the config has videos"):
        list_pairs([InputSpec(kind="videos", path=str(media("sam2_gallery")))], IngestImagesParams())
    with pytest.raises(InputListError, match="ingest reads inputs of kind videos, list, vos; the config has images"):
        list_inputs([images(path=str(contents))])
    mixed = [InputSpec(kind="videos", path=str(media("sam2_gallery"))), images(path=str(contents)),
             images(path=str(styles), role="style")]
    assert {row["kind"] for row in list_inputs(mixed)} == {"video"}
    assert {row["kind"] for row in list_pairs(mixed, IngestImagesParams())} == {"image_pair"}


# The ingest_images stage -----------------------------------------------------------------------------------------


def test_ingest_images_stores_pngs_and_turns_bad_images_into_rows_with_reasons(tmp_path: Path, contents: Path,
                                                                                styles: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    Image.new("RGB", (50, 40)).save(tmp_path / "tiny.png")
    content = sorted(contents.iterdir())[0]
    scream = styles / "the_scream.jpg"
    rows = [
        {"source_id": "good", "content_uri": str(content), "style_uri": str(scream), "stylized_uri": str(content),
         "style_name": "the_scream"},
        {"source_id": "broken", "content_uri": str(tmp_path / "broken.jpg"), "style_uri": str(scream), "style_name": "s"},
        {"source_id": "tiny", "content_uri": str(content), "style_uri": str(tmp_path / "tiny.png"), "style_name": "s"},
        {"source_id": "gone", "content_uri": str(tmp_path / "nope.jpg"), "style_uri": str(scream), "style_name": "s"},
    ]
    stage = stage_of("ingest_images", LIMITS, tmp_path)
    results = {r.sample_id: r for r in stage.process([sample_of(row["source_id"], row, {}) for row in rows])}
    good = results["good"]
    assert good.status == Status.OK and set(good.files) == {"content.png", "style.png", "stylized.png"}
    stored = read_png(good.files["content.png"])
    assert stored.shape == (288, 512, 3)  # 1280x720 shrunk to max_side 512
    assert (good.columns["content_width"], good.columns["content_height"]) == (512, 288)
    assert good.columns["style_id"] == style_id_for(str(scream))
    original = np.asarray(Image.open(content).convert("RGB").resize((512, 288), Image.Resampling.BOX), np.int16)
    assert np.abs(stored.astype(np.int16) - original).mean() < 3  # the same picture, not a placeholder
    assert results["broken"].status == Status.FAILED and "content: " in results["broken"].reason
    assert "cannot decode" in results["broken"].reason
    assert results["tiny"].status == Status.FILTERED and "style: " in results["tiny"].reason
    assert "50x40" in results["tiny"].reason
    assert results["gone"].status == Status.FAILED and "not found" in results["gone"].reason


def test_style_pairs_fans_each_clip_out_into_seeded_style_pairs(tmp_path: Path, styles: Path) -> None:
    params = {**LIMITS, "styles": str(styles), "per_sample": 2, "seed": 0}
    stage = stage_of("style_pairs", params, tmp_path)
    results = stage.process([sample_of("clip-a-c000", {}, {}), sample_of("clip-b-c000", {}, {})])
    assert len(results) == 4 and all(r.status == Status.OK for r in results)
    assert {r.sample_id for r in results} == {
        f"clip-{c}-c000-{style_id_for(str(styles / name))}" for c in "ab" for name in ("starry_night.jpg", "the_scream.jpg")
    }
    assert all(read_png(r.files["style.png"]).shape[2] == 3 for r in results)
    one = stage_of("style_pairs", {**params, "per_sample": 1}, tmp_path)
    picked = [one.process([sample_of(f"clip-{i}", {}, {})])[0].columns["style_name"] for i in range(12)]
    assert set(picked) == {"starry_night", "the_scream"}  # per sample, not one style for all


def test_style_pairs_fingerprint_follows_the_style_list_and_a_bad_style_fails_its_pair(tmp_path: Path, styles: Path) -> None:
    folder = tmp_path / "styles"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((styles / "the_scream.jpg").read_bytes())
    params = StylePairsParams(styles=str(folder), **LIMITS)
    before = StylePairs.fingerprint_extra(params)
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    import stages.style_pairs as module

    module._listed.cache_clear()
    assert StylePairs.fingerprint_extra(params) != before
    stage = stage_of("style_pairs", {**params.model_dump(), "per_sample": 2}, tmp_path)
    results = {r.columns["style_name"]: r for r in stage.process([sample_of("clip", {}, {})])}
    assert results["a"].status == Status.OK
    assert results["b"].status == Status.FAILED and "b.jpg" in results["b"].reason
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no images"):
        StylePairs.fingerprint_extra(StylePairsParams(styles=str(empty)))
