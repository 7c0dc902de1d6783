"""The run-wide near-duplicate walk (``media/dedup.py``) on built signatures: the chain rule, the nearest kept clip
named, clips already seen, ranks, the threshold exact at its edge (bits spread to defeat the block index), a
thousand copies of one clip, and the same decisions whatever the input order and the walk's batches, checked
against a plain walk over every pair. The 300K timing is ``bench/bench_dedup.py``."""

from __future__ import annotations

import random

import numpy as np
import pytest

from media.dedup import MAX_DISTANCE, Blocks, Duplicate, greedy, near_duplicates
from media.signature import FRAMES, parse, signature

BITS = FRAMES * 64


def random_signature(rng: random.Random) -> str:
    return signature([rng.getrandbits(64) for _ in range(FRAMES)])


def flipped(sig: str, bits: list[int]) -> str:
    """``sig`` with the given bit positions (0 = the first frame's most significant) inverted."""
    value = int(sig, 16)
    for b in bits:
        value ^= 1 << (BITS - 1 - b)
    return f"{value:0{BITS // 4}x}"


def reference(words: np.ndarray, max_distance: int, seen: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule, plainly: each row against every kept row before it."""
    kept_by, distance = np.full(len(words), -1), np.zeros(len(words), np.int64)
    kept = list(range(seen))
    for row in range(seen, len(words)):
        d = np.bitwise_count(words[kept] ^ words[row]).sum(axis=1) if kept else np.zeros(0, np.int64)
        near = [(int(d[k]), kept[k]) for k in np.flatnonzero(d <= max_distance)]
        if near:
            distance[row], kept_by[row] = min(near)
        else:
            kept.append(row)
    return kept_by, distance


def test_a_chain_keeps_its_ends_and_the_middle_names_the_first():
    rng = random.Random(1)
    a = random_signature(rng)
    b = flipped(a, list(range(0, 256, 32)))  # 8 bits from a
    c = flipped(b, list(range(16, 256, 32)))  # 8 more: 16 from a
    result = near_duplicates(["a", "b", "c"], [a, b, c])
    assert result == [None, Duplicate("a", 8), None]  # b is not kept, so c, 8 bits from it, is not its duplicate
    backwards = near_duplicates(["a", "b", "c"], [a, b, c], rank=[3, 2, 1])  # walked c, b, a
    assert backwards == [None, Duplicate("c", 8), None]


def test_a_duplicate_names_its_nearest_kept_clip_and_an_earlier_one_on_a_tie():
    rng = random.Random(2)
    k1 = random_signature(rng)
    spread = list(range(3, 256, 18))[:14]
    k2 = flipped(k1, spread)  # 14 bits from k1: both kept
    nearer_k1, nearer_k2, between = flipped(k1, spread[:5]), flipped(k1, spread[:9]), flipped(k1, spread[:7])
    result = near_duplicates(["k1", "k2", "x1", "x2", "x3"], [k1, k2, nearer_k1, nearer_k2, between])
    assert result == [None, None, Duplicate("k1", 5), Duplicate("k2", 5), Duplicate("k1", 7)]


def test_clips_already_seen_count_as_kept_and_are_named():
    rng = random.Random(3)
    old, other = random_signature(rng), random_signature(rng)
    same = old
    near = flipped(old, [1, 70, 140, 200])
    near_near = flipped(near, [10, 80, 150, 210, 250, 5, 100, 180, 30, 60])  # 14 from old, 10 from near
    fresh = random_signature(rng)
    ids = ["s-c000", "n-c000", "nn-c000", "f-c000", "f-c001"]
    result = near_duplicates(ids, [same, near, near_near, fresh, flipped(fresh, [7])],
                             seen_ids=["run1/x", "run1/old"], seen_signatures=[other, old])
    assert result == [Duplicate("run1/old", 0), Duplicate("run1/old", 4), None, None, Duplicate("f-c000", 1)]
    # a clip near two seen clips at the same distance names the first by id, whatever their order
    twin = flipped(old, [0, 1])
    seen = ["b", "a"], [flipped(twin, [2, 3]), flipped(twin, [4, 5])]
    assert near_duplicates(["t"], [twin], seen_ids=seen[0], seen_signatures=seen[1]) == [Duplicate("a", 2)]


@pytest.mark.parametrize("max_distance, radius", [(0, 0), (5, 0), (MAX_DISTANCE, 0), (MAX_DISTANCE, 1), (20, 1),
                                                  (31, 1), (24, 2)])
def test_the_threshold_is_exact_even_with_the_bits_spread_over_every_block(max_distance: int, radius: int):
    rng = random.Random(max_distance)
    blocks = Blocks(*Blocks.for_radius(max_distance, radius))
    bounds = blocks.bounds
    # radius + 1 bits in every block but the first (which the search must then find within radius), the rest there
    spread = [bounds[b] + i for b in range(1, blocks.count) for i in range(radius + 1)][:max_distance]
    first = [bounds[0] + i for i in range(max_distance - len(spread) + 1)]
    assert len(first) <= radius + 1
    sigs = []
    for _ in range(40):
        base = random_signature(rng)
        edge = flipped(base, spread + first[:-1])  # exactly max_distance bits from base
        sigs += [base, edge, flipped(edge, first[-1:])]  # the third: max_distance + 1 from base, 1 from edge
    kept_by, distance = greedy(parse(sigs), max_distance, radius=radius)
    # the edge copy is a duplicate at exactly the threshold; the third is kept (the edge copy is not kept)
    assert kept_by.tolist() == [x for k in range(40) for x in (-1, 3 * k, -1)]
    assert distance.tolist() == [x for _ in range(40) for x in (0, max_distance, 0)]


def make_rows(seed: int, n: int, max_distance: int) -> np.ndarray:
    """``n`` signatures: random ones, copies with up to ``max_distance + 4`` bits moved (some chained), and 200
    copies of one, shuffled."""
    rng = np.random.default_rng(seed)
    rows = list(rng.integers(0, 2**64, (n // 3, FRAMES), dtype=np.uint64))
    while len(rows) < n - 200:
        row = rows[rng.integers(len(rows))].copy()
        for b in rng.choice(BITS, int(rng.integers(0, max_distance + 5)), replace=False):
            row[b // 64] ^= np.uint64(1 << (63 - b % 64))
        rows.append(row)
    rows += [rows[0].copy() for _ in range(200)]
    return np.array(rows)[rng.permutation(len(rows))]


@pytest.mark.parametrize("max_distance", [3, MAX_DISTANCE, 24])
def test_the_walk_equals_the_plain_rule_whatever_its_batches(max_distance: int):
    words = make_rows(max_distance, 1500, max_distance)
    expected = reference(words, max_distance, seen=100)
    assert 300 < int((expected[0] >= 0).sum()) < 1400  # many duplicates, many kept
    for batch, budget, radius in [(8192, 1 << 20, None), (64, 40, 0), (7, 3, 1), (1, 1, 0), (200, 500, 2)]:
        kept_by, distance = greedy(words, max_distance, 100, batch=batch, pair_budget=budget, radius=radius)
        assert np.array_equal(kept_by, expected[0]) and np.array_equal(distance, expected[1]), (batch, budget, radius)


def test_the_decisions_do_not_depend_on_the_input_order():
    words = make_rows(7, 3000, MAX_DISTANCE)
    sigs = [w.astype(">u8").tobytes().hex() for w in words]
    ids = [f"src{i:05d}-c{i % 3:03d}" for i in range(len(sigs))]
    seen_ids, seen_sigs = ids[:150], sigs[:150]
    ids, sigs = ids[150:], sigs[150:]
    first = dict(zip(ids, near_duplicates(ids, sigs, seen_ids=seen_ids, seen_signatures=seen_sigs)))
    assert sum(d is not None for d in first.values()) > 500
    rng = random.Random(0)
    for _ in range(3):
        order = list(range(len(ids)))
        rng.shuffle(order)
        seen_order = list(range(len(seen_ids)))
        rng.shuffle(seen_order)
        again = near_duplicates([ids[i] for i in order], [sigs[i] for i in order],
                                seen_ids=[seen_ids[i] for i in seen_order],
                                seen_signatures=[seen_sigs[i] for i in seen_order])
        assert dict(zip((ids[i] for i in order), again)) == first


def test_a_thousand_copies_of_one_clip_are_one_group_and_stay_cheap():
    rng = random.Random(5)
    intro = random_signature(rng)
    sigs = [intro] * 1000 + [flipped(intro, [rng.randrange(BITS) for _ in range(2)]) for _ in range(1000)]
    sigs += [random_signature(rng) for _ in range(1000)]
    ids = [f"{i:05d}" for i in range(len(sigs))]
    result = greedy(parse(sigs), MAX_DISTANCE, 0, batch=512, pair_budget=1000)
    assert list(np.flatnonzero(result[0][:2000] < 0)) == [0]  # the first copy is kept, every other names it
    assert set(result[0][1:2000].tolist()) == {0} and (result[0][2000:] < 0).all()
    named = near_duplicates(ids, sigs)
    assert {d.of for d in named[:2000] if d is not None} == {"00000"} and named[0] is None


def test_bad_input_is_refused_with_its_reason():
    sig = signature([1, 2, 3, 4])
    with pytest.raises(ValueError, match="repeat"):
        near_duplicates(["a", "a"], [sig, sig])
    with pytest.raises(ValueError, match="64 hex digits, got 'zz'"):
        near_duplicates(["a", "b"], [sig, "zz"])
    with pytest.raises(ValueError, match="one each"):
        near_duplicates(["a"], [sig, sig])
    with pytest.raises(ValueError, match="max_distance"):
        near_duplicates(["a"], [sig], max_distance=256)
    assert near_duplicates([], []) == []
