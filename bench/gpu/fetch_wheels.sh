#!/usr/bin/env bash
# Downloads the wheels of bench/gpu/wheels.txt for a GPU machine's Python 3.12 into .whl/ (ignored by git), to be
# carried there beside the source tree: about 45 MB, within a 64 MiB transfer. Run from any folder of the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -v '^#' bench/gpu/wheels.txt | xargs python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl
du -ch .whl/*.whl | tail -1
