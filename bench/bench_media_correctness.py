"""Measure: every file of the media corpus through the Ingest stage, its clip measured against the ground truth.

    python bench/bench_media_correctness.py [--out bench/results/media_correctness.txt] [--no-big]

The figures behind the "Media correctness" table of docs/reliability.md. Every card video of
``tests/data/bad/media.py`` (``CARD_VIDEOS``: the test card of ``tests/data/bad/cards.py`` in an awkward source
format, each with its ``Truth``), the variants the tests run (interlaced at native size, ``keep`` and
``filter``; alpha on a blue background and ``filter``; HDR ``filter`` and the Y-plane check of the tone
mapping; the lying headers with ``max_clips`` 8), and the other ``VIDEO_FILES`` (truncated, bombs, VFR,
rotated, odd size...) are made in a temporary folder and ingested one by one exactly as
``tests/test_media_correctness.py`` does (its ``_ingest``: ``FAST_INGEST`` with crf 16, 9 frames at 16 fps,
96x64). Nothing here measures differently from the tests: the helpers (``decode_clip``, ``check_clip``,
``check_columns``, ``expected_frames``, ``_patch_errors``, ``_combing``) are imported from the test module, and
the readers from ``cards``. What this adds is the size of each error, not only whether it is under its
tolerance: for the first clip frame and ``frame0.png`` (the two pictures the tests measure) the largest
|error| of the grey patches, the colour patches, the background and the markers, and over every frame of the
clip whether its barcode reads the expected source frame.

A second block ingests the ok card videos at 288x192 (``allow_upscale``: the cards are 128x96, upscaled 2.25x,
except the 640x384 anamorphic one) and checks them the same way at that size. It keeps the 3:2 of 96x64: the
card is 4:3 and its top markers sit at 7-15 % of the height, so a 5:3 clip (e.g. 320x192) crops them in half and
their centroids move by ~5 px; that is the card's layout, not the ingest
(``test_the_card_reads_back_from_its_own_truth`` checks that every box fits at 96x64 only).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_ingest import Report

from media.png import read_png
from media.video_io import decode_frames, probe, resize_center_crop
from tests.conftest import FAST_INGEST
from tests.data.bad import cards, media
from tests.test_bad_media import EXPECTED_VIDEOS
from tests.test_media_correctness import (
    CLIP_SIZE,
    COLOUR_TOLERANCE,
    EXACT,
    GEOMETRY_TOLERANCE,
    _combing,
    _ingest,
    _patch_errors,
    _planes,
    check_clip,
    check_columns,
    decode_clip,
    expected_frames,
)

BIG = (288, 192)  # 3:2 like 96x64: a 5:3 size (320x192) crops the top markers of the 4:3 card in half

# How each file was made: one short phrase (the makers' docstrings in tests/data/bad/media.py say more).
MADE: dict[str, str] = {
    "rgb_png.mov": "PNG rgb24 in MOV",
    "rgb_qtrle.mov": "QTRLE rgb24 in MOV, untagged",
    "rgb_x264rgb.mp4": "libx264rgb lossless (gbrp)",
    "rgb_hevc_gbrp.mp4": "libx265 gbrp lossless",
    "grey_png.mov": "PNG gray (full range) in MOV",
    "bgr24.avi": "rawvideo bgr24 in AVI, untagged",
    "grey_limited.mkv": "FFV1 gray tagged limited range",
    "full_range.mp4": "H.264 lossless, BT.709 full range",
    "bt601.mp4": "H.264 lossless, BT.601 matrix",
    "sar_2to1.mp4": "H.264 320x384 stored, SAR 2:1",
    "corrupt_frames.ts": "MPEG-2 in TS, frames 6-8 damaged",
    "interlaced.mp4": "H.264 interlaced TFF, fields 1/2 apart",
    "alpha.mov": "PNG rgba, transparent background",
    "hdr10.mp4": "HEVC 10-bit PQ BT.2020 (HDR10)",
    "still_first.mkv": "mkv: stream 0 a still, 1 the video",
    "header_understates.mkv": "75 frames, header says 0.1 s",
    "header_overstates.avi": "40 frames, headers say 200",
    "no_pts_start.ts": "TS, first 8 frames without PTS",
    "duplicate_pts.mkv": "mkv, first 16 packets all pts 0",
    "zero_byte.mp4": "empty file",
    "truncated_half.mp4": "faststart mp4 cut at half its bytes",
    "truncated_moov.mp4": "mp4 cut inside its moov box",
    "text.mp4": "a text file named .mp4",
    "audio_only.mp4": "mp4 with one AAC stream",
    "one_frame.mp4": "H.264, 1 frame",
    "bomb_16000.mp4": "2 kB H.264, SPS says 16000x16000",
    "bomb_16384.mp4": "2 kB H.264, SPS says 16384x16384",
    "vfr.mp4": "22 frames 25-140 ms apart (VFR)",
    "rotated.mp4": "128x96 stored, display matrix 90 deg",
    "odd_321x241.mp4": "MPEG-4 Part 2, 321x241",
    "one_pixel_wide.avi": "rawvideo rgb24 1x96 in AVI",
}


def made(name: str) -> str:
    """The phrase of ``MADE``, else the first line of the maker's docstring (files added since)."""
    if name in MADE:
        return MADE[name]
    maker = media.VIDEO_FILES.get(name)
    return short((getattr(maker, "__doc__", None) or "").split(".")[0], 38)

COLUMNS = (f"{'file':<31} {'made':<38} {'status':<9} {'grey':>5} {'colour':>6} {'bg':>5} {'mark':>5} "
           f"{'frames':>7} {'s':>5}  {'src_fixes':<18} {'test':<5} reason / notes")


def short(text: str | None, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


# Measuring -----------------------------------------------------------------------------------------------------


def errors(result: Any, truth: media.Truth, start: int, *, displayed: Callable[[int], np.ndarray] | None = None,
           size: tuple[int, int] = CLIP_SIZE) -> dict[str, float]:
    """The largest |error| of each kind on clip frame 0 and frame0.png (what ``check_clip`` bounds), and how
    many frames of the clip read the expected source frame."""
    displayed = displayed or truth.displayed
    assert displayed is not None
    frames, _ = decode_clip(result.files["clip.mp4"])
    layout = truth.layout()
    shown = cards.clip_layout(layout, *size)
    want = expected_frames(start, len(frames), truth.fps)
    got = [cards.read_index(f, shown) for f in frames]
    truth_picture = displayed(want[0])
    out = {"grey": 0.0, "colour": float("nan"), "bg": 0.0, "mark": 0.0,
           "right": sum(g == w for g, w in zip(got, want)), "total": len(want)}
    png = read_png(result.files["frame0.png"]).astype(np.float64)
    for picture in (frames[0], png):
        kinds = [("grey", "greys"), ("bg", "background")] + ([("colour", "colours")] if truth.colours else [])
        for key, which in kinds:
            errs = _patch_errors(cards.patch_values(picture, shown, which),
                                 cards.patch_values(truth_picture, layout, which))
            worst = max(abs(e) for e in errs)
            out[key] = worst if np.isnan(out[key]) else max(out[key], worst)
        offsets = cards.marker_centres(picture, shown) - cards.expected_centres(shown)
        out["mark"] = max(out["mark"], float(np.abs(offsets).max()))
    return out


def merge(measures: list[dict[str, float]]) -> dict[str, float]:
    out = dict(measures[0])
    for m in measures[1:]:
        for key in ("grey", "colour", "bg", "mark"):
            out[key] = max(out[key], m[key]) if not np.isnan(m[key]) else out[key]
        out["right"] += m["right"]
        out["total"] += m["total"]
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.{digits}f}"


class Bench:
    def __init__(self, report: Report, folder: Path, work: Path) -> None:
        self.report, self.folder, self.work = report, folder, work
        self.failures: list[str] = []
        self.count = 0

    def ingest(self, name: str, **params: Any) -> tuple[list[Any], float]:
        self.count += 1
        where = self.work / f"run{self.count}"
        where.mkdir()
        t0 = time.perf_counter()
        results = _ingest(where, self.folder / name, **params)
        return results, time.perf_counter() - t0

    def row(self, label: str, name: str, results: list[Any], seconds: float, measured: dict[str, float] | None = None,
            problems: list[str] | None = None, notes: str = "") -> None:
        statuses = [str(getattr(r.status, "value", r.status)) for r in results]
        status = statuses[0] if len(set(statuses)) == 1 else "/".join(statuses)
        if len(results) > 1:
            status += f" x{len(results)}"
        fixes = ",".join(sorted({r.columns.get("src_fixes") or "" for r in results} - {""})) if measured else ""
        reason = next((r.reason for r in results if r.reason), None)
        text = notes if measured is not None or not reason else short(reason)
        if measured is not None and notes and reason:
            text = f"{notes}; {short(reason, 50)}"
        verdict = "" if problems is None else ("pass" if not problems else f"FAIL{len(problems)}")
        if problems:
            self.failures += [f"{label}: {p}" for p in problems]
        m = measured or {}
        frames = f"{m['right']}/{m['total']}" if measured else "-"
        self.report.say(f"{label:<31} {made(name):<38} {status:<9} {fmt(m.get('grey')):>5} "
                        f"{fmt(m.get('colour')):>6} {fmt(m.get('bg')):>5} {fmt(m.get('mark')):>5} {frames:>7} "
                        f"{seconds:>5.2f}  {fixes:<18} {verdict:<5} {text}")

    # The card videos, one by one, default params ------------------------------------------------------------

    def card(self, name: str, size: tuple[int, int] = CLIP_SIZE, label: str | None = None, **params: Any) -> None:
        _, truth = media.CARD_VIDEOS[name]
        if size != CLIP_SIZE:
            params = {"width": size[0], "height": size[1], "allow_upscale": True, **params}
        results, seconds = self.ingest(name, **params)
        label = label or name
        if truth.status != "ok" or any(str(getattr(r.status, "value", r.status)) != "ok" for r in results):
            problems = None
            if truth.status != "ok":
                ok = [str(getattr(r.status, "value", r.status)) for r in results] == [truth.status] and (
                    (results[0].reason or "").startswith(truth.reason))
                got = [(r.status, r.reason) for r in results]
                problems = [] if ok else [f"got {got}, expected {truth.status} {truth.reason!r}"]
            else:
                problems = [f"got {[(r.status, r.reason) for r in results]}, expected ok"]
            self.row(label, name, results, seconds, problems=problems)
            return
        measured = merge([errors(r, truth, 9 * k, size=size) for k, r in enumerate(results)])
        problems = [p for k, r in enumerate(results) for p in check_clip(r, truth, start=9 * k, size=size)]
        problems += [p for r in results for p in check_columns(r, name)]
        notes = ""
        if len(results) > 1:
            notes = f"{len(results)} clips, barcodes of every frame checked"
        if name in ("no_pts_start.ts", "duplicate_pts.mkv"):
            repaired = results[0].columns.get("timestamps_repaired")
            notes = f"timestamps_repaired {repaired}"
            if not (repaired or 0) > 0:
                problems.append(f"timestamps_repaired = {repaired!r}, expected > 0")
        if name == "still_first.mkv":
            notes = f"src_stream {results[0].columns.get('src_stream')}"
        if name == "sar_2to1.mp4":
            c = results[0].columns
            notes = f"src {c.get('src_width')}x{c.get('src_height')} sar {c.get('src_sar')}"
        if name == "header_overstates.avi" or name == "header_understates.mkv":
            notes = (notes + "; " if notes else "") + f"src_frames {results[0].columns.get('src_frames')}"
        if name == "hdr10.mp4":
            notes = "grey tolerance 2.33 RGB (= 2 of 8-bit Y)"
        self.row(label, name, results, seconds, measured, problems, notes)

    # The variants the tests run ----------------------------------------------------------------------------------

    def variants(self) -> None:
        name = "interlaced.mp4"
        _, truth = media.CARD_VIDEOS[name]
        with av.open(str(self.folder / name)) as container:
            woven = [cards.yuv_to_rgb(*_planes(f)) for f in container.decode(video=0)]
        woven_combing = max(_combing(woven, media.CARD_SIZE)[:9])
        results, seconds = self.ingest(name, width=None, height=None)
        if results[0].status == "ok":
            frames, _ = decode_clip(results[0].files["clip.mp4"])
            combing = max(_combing(frames, media.CARD_SIZE))
            problems = check_clip(results[0], truth, start=0, size=media.CARD_SIZE) + check_columns(results[0], name)
            if combing > 3:
                problems.append(f"combing {combing} > 3")
            measured = errors(results[0], truth, 0, size=media.CARD_SIZE)
            lag = np.mean([cards.bar_x(f, media.CARD_SIZE) - cards.bar_x(truth.displayed(j), media.CARD_SIZE)
                           for j, f in enumerate(frames)])
            self.row("interlaced.mp4 128x96", name, results, seconds, measured, problems,
                     f"native size; combing <= {combing:.2f} (source woven {woven_combing:.1f}; test: <= 3); "
                     f"moving bar {lag:+.1f} px from frame i's (6 px/frame; test: within 1)")
        else:
            self.row("interlaced.mp4 128x96", name, results, seconds, problems=["not ok"])
        results, seconds = self.ingest(name, interlaced="keep", width=None, height=None)
        if results[0].status == "ok":
            frames, _ = decode_clip(results[0].files["clip.mp4"])
            combing = min(_combing(frames, media.CARD_SIZE))
            problems = [] if combing > 10 and "deinterlace" not in (results[0].columns.get("src_fixes") or "") \
                else [f"keep: combing min {combing} (test: > 10), src_fixes {results[0].columns.get('src_fixes')!r}"]
            self.row("interlaced.mp4 keep", name, results, seconds, problems=problems,
                     notes=f"interlaced: keep, native size: fields stay woven, combing >= {combing:.1f} (test: > 10)")
        else:
            self.row("interlaced.mp4 keep", name, results, seconds, problems=["not ok"])
        for label, name, params, prefix in (("interlaced.mp4 filter", "interlaced.mp4", {"interlaced": "filter"},
                                             "interlaced:"),
                                            ("alpha.mov filter", "alpha.mov", {"alpha": "filter"}, "alpha:"),
                                            ("hdr10.mp4 filter", "hdr10.mp4", {"hdr": "filter"}, "hdr:")):
            results, seconds = self.ingest(name, **params)
            ok = len(results) == 1 and results[0].status == "filtered" and (results[0].reason or "").startswith(prefix)
            got = [(r.status, r.reason) for r in results]
            self.row(label, name, results, seconds, problems=[] if ok else [f"got {got}"])

        name = "alpha.mov"
        _, truth = media.CARD_VIDEOS[name]
        blue = (0, 0, 255)
        results, seconds = self.ingest(name, alpha_background=list(blue))
        displayed = lambda i: media.alpha_truth(i, blue)
        if results[0].status == "ok":
            self.row("alpha.mov on blue", name, results, seconds, errors(results[0], truth, 0, displayed=displayed),
                     check_clip(results[0], truth, start=0, displayed=displayed), "alpha_background (0, 0, 255)")
        else:
            self.row("alpha.mov on blue", name, results, seconds, problems=["not ok"])

        name = "hdr10.mp4"
        expected_y = 16 + 219 * cards.tonemap_grey(cards.pq_decode(
            (np.round(64 + 876 * cards.pq_encode(np.array(media.HDR_NITS))) - 64) / 876))
        results, seconds = self.ingest(name, hdr="tonemap")
        if results[0].status == "ok":
            with av.open(io.BytesIO(results[0].files["clip.mp4"])) as container:
                y = _planes(next(container.decode(video=0)))[0].astype(np.float64)
            shown = cards.clip_layout(media.CARD_VIDEOS[name][1].layout(), *CLIP_SIZE)
            err = np.abs(cards.patch_values(y, shown) - expected_y)
            self.row("hdr10.mp4 Y plane", name, results, seconds, problems=[] if err.max() <= 2 else [f"Y off {err}"],
                     notes=f"Y of the 6 greys vs the reference tone map: max |err| {err.max():.2f} (test: <= 2)")
        else:
            self.row("hdr10.mp4 Y plane", name, results, seconds, problems=["not ok"])

        self.card("header_understates.mkv", label="header_understates max8", max_clips=8)
        self.card("header_overstates.avi", label="header_overstates max8", max_clips=8)

    # The other VIDEO_FILES ---------------------------------------------------------------------------------------

    def others(self) -> None:
        for name in media.VIDEO_FILES:
            if name in media.CARD_VIDEOS:
                continue
            if name == "vfr.mp4":
                self.vfr()
            elif name == "rotated.mp4":
                self.rotated()
            elif name == "odd_321x241.mp4":
                self.odd()
            else:
                results, seconds = self.ingest(name)
                problems = None
                if name in EXPECTED_VIDEOS:  # the status and reason test_bad_media.py asserts
                    status, pattern = EXPECTED_VIDEOS[name]
                    got = [(str(getattr(r.status, "value", r.status)), r.reason or "") for r in results]
                    ok = len(got) == 1 and got[0][0] == status and bool(re.search(pattern, got[0][1]))
                    problems = [] if ok else [f"got {got}, test_bad_media expects {status} {pattern!r}"]
                self.row(name, name, results, seconds, problems=problems)

    def vfr(self) -> None:
        name = "vfr.mp4"
        results, seconds = self.ingest(name, width=None, height=None, max_clips=2)
        if any(r.status != "ok" for r in results):
            self.row(name, name, results, seconds, problems=["not ok"])
            return
        src_fps = len(media.VFR_PTS_MS) / probe(self.folder / name).duration_s
        right = total = 0
        for k, result in enumerate(results):
            frames = decode_frames(result.files["clip.mp4"])
            start = round(k * 9 * src_fps / 16) / src_fps
            expected = [media.vfr_frame_at(start + j / 16) for j in range(9)]
            shown = [int(np.argmin([abs(float(f.mean()) - media.grey_level(i)) for i in range(len(media.VFR_PTS_MS))]))
                     for f in frames]
            right += sum(s == e for s, e in zip(shown, expected))
            total += len(expected)
        measured = {"grey": float("nan"), "colour": float("nan"), "bg": float("nan"), "mark": float("nan"),
                    "right": right, "total": total}
        self.row(name, name, results, seconds, measured, [] if right == total else ["wrong frames"],
                 "native size, 2 clips; frames: the source frame nearest in time (flat grey per frame)")

    def rotated(self) -> None:
        name = "rotated.mp4"
        upright = media.rotated_upright()
        results, seconds = self.ingest(name, width=None, height=None)
        (small,), _ = self.ingest(name)
        if results[0].status != "ok" or small.status != "ok":
            self.row(name, name, [*results, small], seconds, problems=["not ok"])
            return
        frames = decode_frames(results[0].files["clip.mp4"])
        native = float(np.abs(frames.astype(int) - upright).mean()) if frames.shape[1:3] == upright.shape[:2] else 99
        first = decode_frames(small.files["clip.mp4"])[0]
        cropped = float(np.abs(first.astype(int) - resize_center_crop(upright, 96, 64)).mean())
        ok = frames.shape == (9, 128, 96, 3) and native < 3 and cropped < 3
        self.row(name, name, results, seconds, problems=[] if ok else [f"shape {frames.shape}, {native}, {cropped}"],
                 notes=f"upright {frames.shape[2]}x{frames.shape[1]}: mean |err| {native:.2f}; "
                       f"96x64 crop of the upright picture: {cropped:.2f} (test: < 3)")

    def odd(self) -> None:
        name = "odd_321x241.mp4"
        results, seconds = self.ingest(name, width=None, height=None)
        if results[0].status != "ok":
            self.row(name, name, results, seconds, problems=["not ok"])
            return
        frames = decode_frames(results[0].files["clip.mp4"])
        expected = media.quadrant_frame(*media.ODD_SIZE)[:240, :320]
        err = float(np.abs(frames[0].astype(int) - expected).mean()) if frames.shape[1:3] == (240, 320) else 99
        ok = frames.shape == (9, 240, 320, 3) and err < 4
        self.row(name, name, results, seconds, problems=[] if ok else [f"shape {frames.shape}, {err}"],
                 notes=f"{frames.shape[2]}x{frames.shape[1]} clip of the centre: mean |err| {err:.2f} (test: < 4)")


def legend(report: Report) -> None:
    g = media.CARD_VIDEOS["hdr10.mp4"][1].grey_tolerance
    for line in (
        "Columns:",
        "  file     the generated file (tests/data/bad/media.py), or a variant the tests run on it",
        "  made     how the file was made",
        "  status   the Ingest result (xN: N clips)",
        "  grey     max |error| of the grey patches in RGB code values, clip frame 0 and frame0.png vs Truth.displayed",
        "  colour   the same for the colour patches (the channel furthest off; grey sources have greys there);",
        "           '-' where the card has none (HDR, and the interlaced card's moving bar)",
        "  bg       the same for a bit of plain background left of the greys",
        "  mark     max |dx| or |dy| of the four markers' centroids from where the crop and resize put them, px",
        "  frames   clip frames whose barcode reads the expected source frame round(start + j*src_fps/fps) / all",
        "           clip frames (every frame of every clip; VFR: the source frame nearest in time)",
        "  s        seconds of the ingest call (decode + cut + encode)",
        "  src_fixes  what ingest did to the source (column src_fixes)",
        "  test     the verdict of the tests' own checks (check_clip + check_columns, or the status/reason asserted)",
        f"Tolerances the tests assert: greys {1.0:g} code value (HDR: 2 code values of 8-bit Y = {g:.2f} RGB),",
        f"colours and background {COLOUR_TOLERANCE:g}, markers {GEOMETRY_TOLERANCE:g} px, every barcode right.",
        (f"Clip shape: FAST_INGEST ({FAST_INGEST['num_frames']} frames, {FAST_INGEST['fps']:g} fps, "
         f"{CLIP_SIZE[0]}x{CLIP_SIZE[1]}, preset {FAST_INGEST['preset']}, max_clips 1) with crf {EXACT['crf']}, "
         "as the tests."),
    ):
        report.say(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the printed report to this file")
    ap.add_argument("--no-big", action="store_true", help=f"skip the block at {BIG[0]}x{BIG[1]}")
    args = ap.parse_args()
    report = Report()
    report.say(f"libavcodec {'.'.join(map(str, av.library_versions.get('libavcodec', ())))}")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ffp-media-") as tmp:
        folder, work = Path(tmp, "videos"), Path(tmp, "work")
        folder.mkdir()
        work.mkdir()
        t0 = time.perf_counter()
        for name, make in media.VIDEO_FILES.items():
            make(folder / name)
        made_s = time.perf_counter() - t0
        report.say(f"corpus: {len(media.VIDEO_FILES)} files made in {made_s:.1f} s")
        report.say()
        legend(report)
        bench = Bench(report, folder, work)

        report.say()
        report.say(f"Card videos at {CLIP_SIZE[0]}x{CLIP_SIZE[1]} (default params):")
        report.header(COLUMNS)
        for name in media.CARD_VIDEOS:
            bench.card(name)
        report.say()
        report.say("Variants the tests run:")
        report.header(COLUMNS)
        bench.variants()
        report.say()
        report.say("The other VIDEO_FILES (test_bad_media.py asserts their status and reason; ok ones with "
                   "their own checks):")
        report.header(COLUMNS)
        bench.others()
        if not args.no_big:
            report.say()
            report.say(f"Ok card videos at {BIG[0]}x{BIG[1]} (allow_upscale: the cards are 128x96, upscaled "
                       "2.25x; sar_2to1 is 640x384 shown: its centre 576x384, halved):")
            report.header(COLUMNS)
            for name, (_, truth) in media.CARD_VIDEOS.items():
                if truth.status == "ok":
                    bench.card(name, BIG, label=f"{name} {BIG[0]}x{BIG[1]}")
    report.say()
    if bench.failures:
        report.say(f"{len(bench.failures)} problems (what the tests would report):")
        for problem in bench.failures:
            report.say(f"  {problem}")
    else:
        report.say("No problems: every check of the tests holds.")
    report.say(f"{bench.count} ingest calls; total {time.perf_counter() - t_all:.1f} s")
    if args.out is not None:  # the latest figures only: the table is a status, not a history
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"$ python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}\n" + "\n".join(report.lines) + "\n")


if __name__ == "__main__":
    main()
