"""Near-duplicate clips across a run: which clip of each group of near-duplicates is kept, by signature
(``media/signature.py``), deterministically.

The rule is a greedy walk. Clips are taken in a canonical order, ascending ``(rank, id)``, whatever order they are
passed in. A clip is a duplicate when an earlier *kept* clip lies within ``max_distance`` bits of it (bits that
differ over its ``FRAMES`` frame hashes; 256 in all); it names the nearest such clip (a tie: the earliest). Otherwise
it is kept. Clips already seen (an earlier run's kept clips) count as kept before any clip of this run.

So every duplicate is within ``max_distance`` of the clip it names, and no two kept clips of this run are within it
of each other or of a seen clip. In a chain A~B, B~C with A!~C (in that order), B is a duplicate of A and C is kept:
B is not kept, so nothing can be a duplicate of it. The decisions depend only on the clips (ids, signatures and
ranks), not on how they were read or passed: the walk is exact, whatever its batches.

Finding the kept clips near a clip is exact and needs no pass over all pairs (multi-index hashing): the 256 bits are
split into blocks, and two signatures within ``max_distance`` of each other agree on at least one whole block when
there are more blocks than ``max_distance`` (pigeonhole), or to within ``radius`` bits on one when there are more
than ``max_distance / (radius + 1)`` (``layout`` picks the cheaper). A clip is compared only with the kept clips
found so, in sorted block tables. Clips are walked in batches: a batch is first matched against the clips kept before
it (vectorised), then its remaining clips against each other (their close pairs, in order). A batch whose clips
share blocks too often (a thousand copies of one intro) is split in two, so the work stays near linear. At 300K
clips: 2-4 s at ``MAX_DISTANCE``, 13-25 s at 16-20 (``bench/bench_dedup.py``); the cost grows fast beyond.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np

from media.signature import FRAMES, parse

MAX_DISTANCE = 12  # bits of FRAMES * 64: re-encoded, rescaled or letterboxed copies measure 0-8; other moments of
#                    one static shot 18-30, other scenes 90 and more (tests/test_signature.py, docs/media.md)
BITS = FRAMES * 64
BATCH = 8192  # clips per batch of the walk
PAIR_BUDGET = 1 << 20  # block-sharing pairs a batch may hold among its own clips before it is split
SAMPLE = 2048  # signatures the search layout is chosen on (``layout``)...
SAMPLE_PAIRS = 1 << 21  # ...and the most pairs it counts per radius


@dataclass(frozen=True)
class Duplicate:
    of: str  # the id of the kept clip (of this run, or seen) it is a near-duplicate of
    distance: int  # bits that differ between the two signatures


def near_duplicates(ids: Sequence[str], signatures: Sequence[str], *, max_distance: int = MAX_DISTANCE,
                    rank: Sequence[float] | None = None, seen_ids: Sequence[str] = (),
                    seen_signatures: Sequence[str] = ()) -> list[Duplicate | None]:
    """For each clip (``ids[i]``, ``signatures[i]``, text signatures) in the order given: None when it is kept,
    else the kept clip it duplicates. Clips are walked by ascending ``(rank[i], ids[i])`` (no rank: by id; e.g. a
    rank of minus the source's pixels keeps the largest copy). ``seen_ids``/``seen_signatures``: clips of earlier
    runs, all counted as kept, before the clips (a tie between two: the first by id)."""
    ids, signatures, seen_ids, seen_signatures = list(ids), list(signatures), list(seen_ids), list(seen_signatures)
    if len(ids) != len(signatures) or (rank is not None and len(rank) != len(ids)):
        ranks = 0 if rank is None else len(rank)
        raise ValueError(f"{len(ids)} ids, {len(signatures)} signatures and {ranks} ranks: one each per clip")
    if len(seen_ids) != len(seen_signatures):
        raise ValueError(f"{len(seen_ids)} seen ids for {len(seen_signatures)} seen signatures")
    if len(set(ids)) != len(ids) or len(set(seen_ids)) != len(seen_ids):
        raise ValueError("clip ids repeat" if len(set(ids)) != len(ids) else "seen ids repeat")
    keys = (lambda i: (float(rank[i]), ids[i])) if rank is not None else ids.__getitem__
    order = sorted(range(len(ids)), key=keys)
    seen = sorted(range(len(seen_ids)), key=seen_ids.__getitem__)
    words = np.concatenate([parse([seen_signatures[i] for i in seen]), parse([signatures[i] for i in order])])
    kept_by, distances = greedy(words, max_distance, len(seen))
    names = [seen_ids[i] for i in seen] + [ids[i] for i in order]
    out: list[Duplicate | None] = [None] * len(ids)
    for position, i in enumerate(order, start=len(seen_ids)):
        if kept_by[position] >= 0:
            out[i] = Duplicate(names[kept_by[position]], int(distances[position]))
    return out


def greedy(words: np.ndarray, max_distance: int = MAX_DISTANCE, seen: int = 0, *, batch: int = BATCH,
           pair_budget: int = PAIR_BUDGET, radius: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The walk on a ``(n, FRAMES)`` uint64 array in walk order, whose first ``seen`` rows are kept already:
    ``(kept_by, distance)``, per row the row of the kept clip it duplicates (-1: kept) and the bits between them.
    ``batch``, ``pair_budget`` and ``radius`` (the block search radius, ``layout``) change the work, never the
    result."""
    if not 0 <= max_distance < BITS:
        raise ValueError(f"max_distance is 0 to {BITS - 1} bits, got {max_distance}")
    words = np.ascontiguousarray(words, np.uint64)
    n = len(words)
    kept_by = np.full(n, -1, np.int64)
    distance = np.zeros(n, np.int64)
    blocks = Blocks(*(layout(max_distance, words) if radius is None else Blocks.for_radius(max_distance, radius)))
    walk = _Walk(words, blocks, max_distance, kept_by, distance, pair_budget)
    walk.index.add(np.arange(seen))
    for start in range(seen, n, batch):
        walk.resolve(np.arange(start, min(n, start + batch)))
    return kept_by, distance


def layout(max_distance: int, words: np.ndarray) -> tuple[int, int]:
    """The cheaper ``(blocks, radius)`` for these signatures, radius 0 or 1. Two signatures within ``max_distance``
    bits agree on one block to within ``radius`` bits when ``blocks * (radius + 1) > max_distance``. The walk looks
    up, for each clip, every key within ``radius`` of each of its blocks (the probes), and compares it with every
    kept clip found (the pairs): many small blocks make few probes but many pairs, fewer larger blocks the opposite.
    The pairs that cost (further apart than ``max_distance``: near ones are duplicates, which the walk does not keep)
    are counted on an even sample: real pictures set some bits more often than others, so that blocks collide more
    than random ones would. A pair costs about 2.5 probes (measured: 0.35 and 0.15 us)."""
    n = len(words)
    sample = words[np.linspace(0, n - 1, min(n, SAMPLE)).astype(np.int64)] if n else words

    def cost(radius: int) -> float:
        blocks = Blocks(*Blocks.for_radius(max_distance, radius))
        bits = BITS // blocks.count
        probes = blocks.count * sum(comb(bits, i) for i in range(radius + 1))
        pairs = _unrelated_pairs(blocks, sample, max_distance) * (n / max(1, len(sample))) ** 2
        chance = n * n / 2 * probes / 2**bits  # what random signatures give: the floor of a small sample
        return n * probes + 2.5 * max(pairs, chance)

    return Blocks.for_radius(max_distance, min(range(2), key=cost))


def _unrelated_pairs(blocks: Blocks, sample: np.ndarray, max_distance: int) -> float:
    """Pairs of ``sample`` found by the search but further apart than ``max_distance``, each way counted as half
    (from the first rows only when they would be too many: scaled up)."""
    rows = np.arange(len(sample))
    keys = blocks.keys(sample)
    table = _sorted(keys.ravel(), np.repeat(rows, blocks.count))
    found, owners = blocks.probes(keys, rows)
    counts = np.searchsorted(table[0], found, "right") - np.searchsorted(table[0], found, "left")
    per_row = np.cumsum(np.bincount(owners, counts, minlength=len(sample)))
    used = max(1, int(np.searchsorted(per_row, SAMPLE_PAIRS, "right")))  # the first rows, up to SAMPLE_PAIRS pairs
    keep = owners < used
    a, b = _matches(found[keep], owners[keep], *table)
    far = np.bitwise_count(sample[a] ^ sample[b]).sum(axis=1) > max_distance
    return float(far.sum()) / 2 * len(sample) / used


@dataclass(frozen=True)
class Blocks:
    """How signatures are cut for the search: ``count`` blocks of the bits as written (frame after frame), each
    looked up with every key within ``radius`` bits."""

    count: int
    radius: int

    @staticmethod
    def for_radius(max_distance: int, radius: int) -> tuple[int, int]:
        """The fewest blocks (at least 8: 32 bits or fewer each) that make ``radius`` exact for ``max_distance``."""
        return min(BITS, max(8, -(-(max_distance + 1) // (radius + 1)))), radius

    @property
    def bounds(self) -> list[int]:
        return [round(b * BITS / self.count) for b in range(self.count + 1)]

    def keys(self, words: np.ndarray) -> np.ndarray:
        """``(n, count)`` int64 keys: block ``b`` of each signature, with ``b`` above bit 32 so that the blocks of
        all positions share one sorted table."""
        bounds = self.bounds
        keys = np.empty((len(words), self.count), np.int64)
        for b in range(self.count):
            keys[:, b] = _bits(words, bounds[b], bounds[b + 1] - bounds[b]).astype(np.int64) | (b << 32)
        return keys

    def probes(self, keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every key within ``radius`` of each block of ``rows``, sorted, with the row of each."""
        if not self.radius:
            return _sorted(keys[rows].ravel(), np.repeat(rows, self.count))
        bounds = self.bounds
        probes, owners = [], []
        for b in range(self.count):
            masks = _masks(bounds[b + 1] - bounds[b], self.radius)
            probes.append((keys[rows, b][:, None] ^ masks[None, :]).ravel())
            owners.append(np.repeat(rows, len(masks)))
        return _sorted(np.concatenate(probes), np.concatenate(owners))


def _masks(length: int, radius: int) -> np.ndarray:
    """Every ``length``-bit value with at most ``radius`` bits set."""
    return np.array([sum(1 << i for i in bits) for r in range(radius + 1) for bits in combinations(range(length), r)],
                    np.int64)


def _bits(words: np.ndarray, start: int, length: int) -> np.ndarray:
    """Bits ``start`` to ``start + length`` (at most 32) of each row, most significant first, as uint64."""
    word, offset = divmod(start, 64)
    mask = np.uint64((1 << length) - 1)
    if offset + length <= 64:
        return (words[:, word] >> np.uint64(64 - offset - length)) & mask
    low = offset + length - 64  # bits taken from the next word
    return ((words[:, word] << np.uint64(low)) | (words[:, word + 1] >> np.uint64(64 - low))) & mask


class _Index:
    """The kept clips' block keys, in sorted runs (merged as they grow: an insert costs O(log n) amortised)."""

    def __init__(self, keys: np.ndarray, blocks: Blocks) -> None:
        self.keys, self.blocks = keys, blocks
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, row of each)

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        self.runs.append(_sorted(self.keys[rows].ravel(), np.repeat(rows, self.keys.shape[1])))
        while len(self.runs) > 1 and len(self.runs[-1][0]) * 2 >= len(self.runs[-2][0]):
            (k1, r1), (k2, r2) = self.runs.pop(), self.runs.pop()
            # a stable sort merges two sorted runs in linear time (numpy's timsort finds them)
            self.runs.append(_sorted(np.concatenate([k2, k1]), np.concatenate([r2, r1]), "stable"))

    def candidates(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, kept row) pairs with a block within the search radius; a pair may repeat."""
        queries, owners = self.blocks.probes(self.keys, rows)
        found = [_matches(queries, owners, keys, kept) for keys, kept in self.runs]
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate([a for a, _ in found]), np.concatenate([b for _, b in found])


def _sorted(keys: np.ndarray, rows: np.ndarray, kind: str = "quicksort") -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind=kind)  # type: ignore[call-overload]
    return keys[order], rows[order]


def _matches(queries: np.ndarray, owners: np.ndarray, keys: np.ndarray, rows: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Every (owner, row) with ``queries[i] == keys[j]``: ``keys`` sorted (``queries`` too, for speed: a search
    then starts where the one before ended)."""
    lo = np.searchsorted(keys, queries, "left")
    counts = np.searchsorted(keys, queries, "right") - lo
    hit = counts > 0
    lo, counts, owners = lo[hit], counts[hit], owners[hit]
    total = int(counts.sum())
    # positions lo[i] .. lo[i] + counts[i] - 1 for each hit, flattened
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return np.repeat(owners, counts), rows[starts + np.arange(total)]


class _Walk:
    def __init__(self, words: np.ndarray, blocks: Blocks, max_distance: int, kept_by: np.ndarray,
                 distance: np.ndarray, pair_budget: int) -> None:
        self.words, self.blocks, self.keys, self.max_distance = words, blocks, blocks.keys(words), max_distance
        self.kept_by, self.distance, self.pair_budget = kept_by, distance, pair_budget
        self.index = _Index(self.keys, blocks)

    def _close(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs (a, b) within ``max_distance``, each once, with their distance."""
        if len(a):
            pair = np.unique(a * len(self.words) + b)
            a, b = pair // len(self.words), pair % len(self.words)
        d = np.bitwise_count(self.words[a] ^ self.words[b]).sum(axis=1, dtype=np.int64)
        near = d <= self.max_distance
        return a[near], b[near], d[near]

    def resolve(self, rows: np.ndarray) -> None:
        """Decide ``rows`` (ascending, after every row decided so far) and add the kept ones to the index."""
        a, b, d = self._close(*self.index.candidates(rows))
        if len(a):  # the nearest kept row, ties to the earliest: sorted by (row, distance, kept row)
            order = np.lexsort((b, d, a))
            a, b, d = a[order], b[order], d[order]
            first = np.concatenate([[True], a[1:] != a[:-1]])
            a, b, d = a[first], b[first], d[first]
        rest = np.setdiff1d(rows, a, assume_unique=True)  # no kept row before the batch is near them
        width = self.keys.shape[1]
        table = _sorted(self.keys[rest].ravel(), np.repeat(rest, width))
        queries = self.blocks.probes(self.keys, rows)
        pairs = np.searchsorted(table[0], queries[0], "right") - np.searchsorted(table[0], queries[0], "left")
        if len(rows) > 1 and int(pairs.sum()) - len(rest) * width > self.pair_budget:
            half = len(rows) // 2
            self.resolve(rows[:half])
            self.resolve(rows[half:])
            return
        self.kept_by[a], self.distance[a] = b, d
        self._within(rows, queries, table)

    def _within(self, rows: np.ndarray, queries: tuple[np.ndarray, np.ndarray], table: tuple[np.ndarray, np.ndarray]
                ) -> None:
        """Decide ``rows`` against the rows of the same batch before them, in walk order. ``queries``: their block
        probes, sorted, with their rows; ``table``: the block keys of the rows with no kept row near them before the
        batch (the only ones that can be kept)."""
        later, earlier = _matches(*queries, *table)
        before = earlier < later
        a, b, d = self._close(earlier[before], later[before])
        partners: dict[int, list[tuple[int, int]]] = {}  # row -> (distance, earlier row), nearest and earliest first
        for row, dist, first in sorted(zip(b.tolist(), d.tolist(), a.tolist())):
            partners.setdefault(row, []).append((dist, first))
        kept: list[int] = []
        for row in rows.tolist():
            for dist, first in partners.get(row, ()):
                if self.kept_by[first] < 0:  # kept: the nearest kept row of the batch before this one
                    if self.kept_by[row] < 0 or dist < self.distance[row]:  # a tie goes to the one before the batch
                        self.kept_by[row], self.distance[row] = first, dist
                    break
            if self.kept_by[row] < 0:
                kept.append(row)
        self.index.add(np.array(kept, np.int64))


def _ranges(counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(c)`` for each count."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, np.int64)
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
