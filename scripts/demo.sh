#!/usr/bin/env bash
# The main job: set up the environment, then run `crossformer demo` on the embedded data.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec crossformer demo "$@"
