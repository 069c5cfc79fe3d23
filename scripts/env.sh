#!/usr/bin/env bash
# Create (once) and activate the project's virtual environment in .venv, with the package installed editable.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it only installs what is missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CROSSFORMER_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.crossformer-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  # torch / torchvision first: on this project's machines pip serves them from local disk
  "$VENV/bin/python" -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONHASHSEED="${PYTHONHASHSEED:-0}"
