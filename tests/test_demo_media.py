import json

import cv2
import numpy as np
from PIL import Image

from media import demo_media as dm
from media.synth_ops import instance_ids
from media.vos import read_palette_mask

KW = dict(num_sequences=2, num_frames=6, width=96, height=64)


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_metadata(tmp_path):
    root = dm.make_demo_vos(tmp_path / "demo", fps=12, **KW)
    for seq in ("demo-000", "demo-001"):
        jpgs = sorted((root / "JPEGImages/480p" / seq).iterdir())
        pngs = sorted((root / "Annotations/480p" / seq).iterdir())
        assert [p.name for p in jpgs] == [f"{t:05d}.jpg" for t in range(6)]
        assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(6)]
        assert cv2.imread(str(jpgs[0])).shape == (64, 96, 3)
    meta = json.loads((root / "ffp_demo.json").read_text())
    assert meta["fps"] == 12 and meta["sequences"] == ["demo-000", "demo-001"]
    assert (meta["width"], meta["height"], meta["num_frames"]) == (96, 64, 6)


def test_deterministic_for_a_seed(tmp_path):
    a = files(dm.make_demo_vos(tmp_path / "a", **KW))
    b = files(dm.make_demo_vos(tmp_path / "b", **KW))
    c = files(dm.make_demo_vos(tmp_path / "c", seed=1, **KW))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_palette_png_round_trip(tmp_path):
    ids = np.random.default_rng(0).integers(0, 5, (17, 23), dtype=np.uint8)
    path = tmp_path / "m.png"
    dm.write_index_png(path, ids)
    np.testing.assert_array_equal(read_palette_mask(path), ids)
    with Image.open(path) as img:
        assert img.mode == "P"
        pal = np.frombuffer(bytes(img.getpalette()), np.uint8).reshape(-1, 3)
    assert pal[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]  # DAVIS colours


def test_annotations_are_the_drawn_geometry(tmp_path):
    root = dm.make_demo_vos(tmp_path / "demo", **KW)
    for i in range(2):
        frames, masks = dm.render_sequence(np.random.default_rng([0, i]), 6, 96, 64)
        bg, none = dm.render_sequence(np.random.default_rng([0, i]), 6, 96, 64, with_objects=False)
        assert not none.any()
        seq = root / "Annotations/480p" / f"demo-{i:03d}"
        read = np.stack([read_palette_mask(seq / f"{t:05d}.png") for t in range(6)])
        np.testing.assert_array_equal(read, masks)
        jpg = np.stack([cv2.imread(str(root / "JPEGImages/480p" / f"demo-{i:03d}" / f"{t:05d}.jpg"))[..., ::-1]
                        for t in range(6)])
        assert np.abs(jpg.astype(int) - frames).mean() < 4  # JPEG q95 of the rendered frames
        # Outside the masks only background was drawn; inside, the objects were.
        obj = masks > 0
        np.testing.assert_array_equal(frames[~obj], bg[~obj])
        assert (frames != bg).any(axis=-1)[obj].mean() > 0.95


def test_objects_present_and_moving():
    for i in range(4):
        frames, masks = dm.render_sequence(np.random.default_rng([0, i]), 12, 128, 80)
        ids = np.unique(masks)
        assert 3 <= len(ids) <= 4 and ids[0] == 0  # background + 2-3 objects
        assert instance_ids(masks)  # something usable in frame 0
        for oid in ids[1:]:
            ys, xs = np.nonzero(masks[0] == oid)
            ye, xe = np.nonzero(masks[-1] == oid)
            if len(ys) and len(ye):
                assert np.hypot(xs.mean() - xe.mean(), ys.mean() - ye.mean()) > 1.0
        assert (masks[0] != masks[-1]).any()
        assert not np.array_equal(frames[0], frames[1])
