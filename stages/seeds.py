"""Per-sample seeds: stable across reruns and machines, different per sample."""

from __future__ import annotations

import hashlib


def sample_key(seed: int, sample_id: str) -> int:
    """An unsigned 64-bit number from the run seed and the sample id (the first 8 bytes of their sha256)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:8], "little")
