#!/usr/bin/env bash
# Installs ffp and its pinned dependencies into ./.venv (or $FFP_VENV). Used by the README, by .ci/run and by
# new users alike. Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FFP_VENV:-.venv}"
python="${PYTHON:-python3}"

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
echo "installing pinned dependencies (requirements/lock.txt)"
"${pip[@]}" install --quiet -r requirements/lock.txt
"${pip[@]}" install --quiet --no-deps -e .
"$venv/bin/ffp" --help >/dev/null
echo "ffp installed in $venv: run $venv/bin/ffp --help"
