"""Benchmark: the run-wide near-duplicate walk (``media/dedup.py``) on 300K signatures.

    python bench/bench_dedup.py [--clips 300000] [--seen 20000] [--max-distance 12 16 20] [--repeat 2]
                                [--out bench/results/dedup.txt]

Signatures are random: each frame hash has 32 of its 64 bits set, as a pHash does, and the 4 frames of a clip are
near each other (a few bits moved from frame to frame), as in a shot. Planted among them:

* 1 % of the clips have 1 to 3 copies, each with 0 to ``max_distance`` bits moved (re-encodes, rescales);
* one intro repeated 3,000 times with 0 to 4 bits moved (the same opening in every video of a channel), which makes
  thousands of clips share blocks;
* copies of a tenth of the ``--seen`` clips of an earlier run.

Timed: ``near_duplicates`` as the run-wide stage calls it (text signatures in, ids sorted, a ``Duplicate`` or None
per clip out), best of ``--repeat``; and ``greedy`` alone on the parsed array. Checked: no planted copy is kept
beside its original (the first of the two in the walk is kept), every duplicate is within the threshold of the clip
it names, and no unplanted clip is a duplicate (random signatures are ~128 bits apart).
Each threshold runs twice: with uniform bits, then with each bit position biased (the 32 bits of a frame drawn with
weights of 0.25 to 4 by position, the same for all clips), which makes blocks collide more, as real pictures may.
The layout the walk picks (``media.dedup.layout``: blocks, search radius) is on each line.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from media.dedup import greedy, layout, near_duplicates  # noqa: E402
from media.signature import FRAMES, parse  # noqa: E402


def frame_hashes(rng: np.random.Generator, n: int, bias: np.ndarray | None) -> np.ndarray:
    """``n`` 64-bit hashes with 32 bits set each, as bool (n, 64); with ``bias``, bit i more likely where it is high."""
    scores = rng.random((n, 64)) if bias is None else rng.random((n, 64)) ** (1 / (bias / (1 - bias)))
    top = np.argsort(-scores, axis=1)[:, :32]
    bits = np.zeros((n, 64), bool)
    np.put_along_axis(bits, top, True, axis=1)
    return bits


def move(rng: np.random.Generator, bits: np.ndarray, count: int) -> np.ndarray:
    """``bits`` (FRAMES, 64) with ``count`` bits changed (an even count keeps 32 set in a frame: pairs moved)."""
    out = bits.copy()
    for _ in range(count // 2):
        f = rng.integers(FRAMES)
        on, off = np.flatnonzero(out[f]), np.flatnonzero(~out[f])
        out[f, rng.choice(on)], out[f, rng.choice(off)] = False, True
    if count % 2:
        f, i = rng.integers(FRAMES), rng.integers(64)
        out[f, i] = ~out[f, i]
    return out


def text(bits: np.ndarray) -> list[str]:
    """(n, FRAMES, 64) bool to signature text."""
    packed = np.packbits(bits.reshape(len(bits), -1), axis=1)
    return [row.tobytes().hex() for row in packed]


def make(rng: np.random.Generator, clips: int, seen: int, max_distance: int, biased: bool):
    bias = rng.uniform(0.2, 0.8, 64) if biased else None
    base = frame_hashes(rng, clips + seen, bias)
    sigs = np.repeat(base[:, None, :], FRAMES, axis=1)
    for f in range(1, FRAMES):  # frames of one shot: a few bits moved from the frame before
        for _ in range(4):
            rows = np.arange(len(sigs))
            on = np.argsort(-(sigs[:, f] + rng.random((len(sigs), 64))), axis=1)[:, 0]
            off = np.argsort(-(~sigs[:, f] + rng.random((len(sigs), 64))), axis=1)[:, 0]
            sigs[rows, f, on], sigs[rows, f, off] = False, True
    planted: dict[int, int] = {}  # copy row -> the row it copies
    originals = rng.choice(clips, clips // 100, replace=False)
    copies = []
    for row in originals:
        for _ in range(rng.integers(1, 4)):
            copies.append((row, move(rng, sigs[row], int(rng.integers(0, max_distance + 1)))))
    intro = clips // 2
    for _ in range(min(3000, clips // 100)):
        copies.append((intro, move(rng, sigs[intro], int(rng.integers(0, 5)))))
    for row in rng.choice(np.arange(clips, clips + seen), seen // 10, replace=False):
        copies.append((row, move(rng, sigs[row], int(rng.integers(0, max_distance + 1)))))
    free = rng.choice(clips, len(copies), replace=False)  # rows overwritten by the copies (not originals)
    free = np.setdiff1d(free, np.concatenate([originals, [intro]]))
    for target, (row, copy) in zip(free, copies):
        sigs[target] = copy
        planted[int(target)] = int(row)
    ids = [f"src{i:07d}-c000" for i in range(clips)]
    seen_ids = [f"old{i:07d}-c000" for i in range(seen)]
    signatures = text(sigs[:clips])
    return ids, signatures, seen_ids, text(sigs[clips:]), planted


def run(args: argparse.Namespace, biased: bool) -> str:
    rng = np.random.default_rng(20)
    t0 = time.perf_counter()
    ids, signatures, seen_ids, seen_sigs, planted = make(rng, args.clips, args.seen, args.max_distance, biased)
    built = time.perf_counter() - t0
    best, result = float("inf"), None
    for _ in range(args.repeat):
        t = time.perf_counter()
        result = near_duplicates(ids, signatures, max_distance=args.max_distance, seen_ids=seen_ids,
                                 seen_signatures=seen_sigs)
        best = min(best, time.perf_counter() - t)
    assert result is not None
    words = np.concatenate([parse(seen_sigs), parse(signatures)])
    t = time.perf_counter()
    greedy(words, args.max_distance, len(seen_ids))
    walk = time.perf_counter() - t
    dups = {i for i, r in enumerate(result) if r is not None}
    # a planted pair (copy, original) both kept would break the rule (a seen original is always kept)
    missed = [i for i, j in planted.items() if i not in dups and (j >= args.clips or j not in dups)]
    names = {name: k for k, name in enumerate(seen_ids + ids)}
    kept_of = np.array([names[result[i].of] for i in sorted(dups)], np.int64)
    rows = np.array(sorted(dups), np.int64) + len(seen_ids)
    too_far = int((np.bitwise_count(words[rows] ^ words[kept_of]).sum(axis=1) > args.max_distance).sum())
    unplanted = dups - set(planted) - set(planted.values())
    assert not missed and not too_far, (missed[:5], too_far)
    blocks, radius = layout(args.max_distance, words)
    return (f"{'biased' if biased else 'uniform'} bits: {args.clips} clips + {args.seen} seen, max_distance "
            f"{args.max_distance} ({blocks} blocks, radius {radius}): near_duplicates {best:.2f} s (greedy alone "
            f"{walk:.2f} s), {len(dups)} duplicates "
            f"({len(planted)} planted copies, none kept beside its original; {len(unplanted)} unplanted), "
            f"built in {built:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300_000)
    parser.add_argument("--seen", type=int, default=20_000)
    parser.add_argument("--max-distance", type=int, nargs="+", default=[12, 16, 20])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dedup.txt")
    args = parser.parse_args()
    lines = [f"# bench_dedup: {platform.node()} {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
             f"numpy {np.__version__}"]
    for max_distance in args.max_distance:
        for biased in (False, True):
            lines.append(run(argparse.Namespace(**{**vars(args), "max_distance": max_distance}), biased))
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
