"""Tiny profile for Meta's ``sam2`` backend: random weights for its hiera-t config (its code has no smaller one)."""

from models.tiny.sam2_video import VERSION
from models.tiny.sam2_video import build_meta as build

__all__ = ["VERSION", "build"]
