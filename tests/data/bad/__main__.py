"""``python -m tests.data.bad FOLDER``: write the whole bad-input corpus into FOLDER and list it."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.data.bad import media, paths, texts


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.data.bad FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    written = [*media.generate(folder / "media"), *paths.generate(folder / "paths"), *texts.generate(folder / "texts")]
    for path in written:
        print(path.relative_to(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
