#!/usr/bin/env bash
# The test suite: set up the environment, lint and format-check with ruff, then pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
ruff check src tests scripts benchmarks
ruff format --check src tests scripts benchmarks
exec python -m pytest -q "$@"
