#!/usr/bin/env bash
# The one command a bare single-GPU machine runs (its own python3 with torch and transformers; the wheels of
# bench/gpu/fetch_wheels.sh carried in .whl/): installs the wheels into /tmp/site, times every model stage of the
# GPU presets (bench/gpu/run.py), then runs the gpu-marked tests. Results go to ${OUT:-bench/results}.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-bench/results}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 FFP_TINY_CACHE=/tmp/ffp-cache/tiny
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu-device.txt"
timeout 480 python3 bench/gpu/run.py --out "$out" 2>&1 | tee "$out/gpu-log.txt"
status=${PIPESTATUS[0]}
if python3 -c "import pytest" 2>/dev/null; then
  # only test_track.py: collecting all of tests/ imports duckdb and ray (manifests.query, pipeline.runner), which
  # a bare GPU image lacks; test_local_track's gpu test needs Ray and vLLM anyway
  timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_track.py 2>&1 | tail -20 \
    | tee -a "$out/gpu-log.txt"
fi
exit "$status"
