"""Make the registry's torchvision 0.28.0 (a CUDA build) importable on the CPU build of torch 2.13.0.

On CPU torch, torchvision's compiled ops do not load, and two unguarded ``register_fake`` decorators in
``torchvision/_meta_registrations.py`` then fail at import (``operator torchvision::nms does not exist``).
Guarding them the way the file already guards its other registrations makes transforms, image and video
processors work (``torchvision.ops`` and ``torchvision.io`` still need the compiled ops; nothing here uses
them). Idempotent; a no-op where the ops load (GPU images with a matching torchvision).
See ../shared/ENVIRONMENT.md ("torchvision") for why there is no cleaner way on a CPU-only machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GUARD = "(torch.library.register_fake({op}) if torchvision.extension._has_ops() else (lambda fn: fn))"


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed: nothing to patch")
        return 0
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = original = path.read_text()
    for op in ('"torchvision::nms"', '"torchvision::qnms"'):
        text = text.replace(f"@torch.library.register_fake({op})", "@" + GUARD.format(op=op))
    if text != original:
        path.write_text(text)
        print(f"patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
