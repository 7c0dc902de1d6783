"""The ``tiny`` profile: random-weight tiny versions of the real architectures, built locally, no downloads.

``ensure(arch)`` builds a model folder once per machine (seeded, so every build is the same model) under
``$FFP_TINY_CACHE`` (default ``~/.cache/ffp/tiny``) and returns its path; stages then load it through the
same ``from_pretrained`` code as the real checkpoints. Builds go to a temporary folder renamed into place,
so actors starting at once on one machine never see a half-written model.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

BUILDERS: dict[str, str] = {
    "qwen2_5_vl": "models.tiny.qwen2_5_vl",
    "grounding_dino": "models.tiny.grounding_dino",
    "sam2_video": "models.tiny.sam2_video",
    "sam2_meta": "models.tiny.sam2_meta",
    "wan_vace": "models.tiny.wan_vace",
    "wan_i2v": "models.tiny.wan_i2v",
    "depth_anything": "models.tiny.depth_anything",
    "clip": "models.tiny.clip",
    "dinov2": "models.tiny.dinov2",
}
"""arch -> module with ``VERSION: str`` and ``build(folder: Path) -> None``."""


def cache_root() -> Path:
    return Path(os.environ.get("FFP_TINY_CACHE") or Path.home() / ".cache" / "ffp" / "tiny")


def _module(arch: str):  # noqa: ANN202 - a builder module
    if arch not in BUILDERS:
        raise ValueError(f"no tiny model {arch!r}; tiny models: {', '.join(sorted(BUILDERS))}")
    return import_module(BUILDERS[arch])


def builder_version(arch: str) -> str:
    return str(_module(arch).VERSION)


def ensure(arch: str) -> Path:
    """Path of the tiny ``arch`` model folder, built now if this machine has none."""
    module = _module(arch)

    def build(folder: Path) -> None:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module.build(folder)

    return built_once(f"{arch}-v{module.VERSION}", str(module.VERSION), build)


def built_once(name: str, version: str, build: Callable[[Path], None]) -> Path:
    """``cache_root()/name``, made by ``build`` into a temporary folder and renamed into place when this machine has
    none yet (two processes building it at once both end with one complete folder)."""
    target = cache_root() / name
    if (target / ".complete").exists():
        return target
    cache_root().mkdir(parents=True, exist_ok=True)
    temporary = cache_root() / f".build-{name}-{uuid.uuid4().hex}"
    try:
        build(temporary)
        (temporary / ".complete").write_text(version)
        try:
            os.rename(temporary, target)
        except OSError:  # another process finished first (the target exists and is complete)
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target
