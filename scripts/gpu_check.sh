#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA device and torch already installed (no virtual environment is
# built: the card's own torch build is used). Writes to $OUT (default: gpu_check/):
#   cuda_tests.log / cuda_tests.xml  tests/test_cuda.py, every test named with its outcome (-rA, JUnit XML)
#   profile_gpu.json                 benchmarks/gpu_profile.py: per-module times, top kernels, A/B of the levers
#   speed_gpu.json / .png            benchmarks/gpu.py: the full GPU benchmark (skip it with GPU_CHECK_BENCH=0)
# Wheels under .whl/ (e.g. timm, pycocotools for a machine without an index) are installed to a private target
# first. Usage: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_site .whl/*.whl
    export PYTHONPATH="/tmp/gpu_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1

workers=()
python3 -c "import xdist" 2> /dev/null && workers=(-n 6)
time python3 -m pytest tests/test_cuda.py -q -rA "${workers[@]}" -p no:cacheprovider \
    --junitxml "$OUT/cuda_tests.xml" > "$OUT/cuda_tests.log" 2>&1
tests_rc=$?
grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" "$OUT/cuda_tests.log" | tail -20

time python3 benchmarks/gpu_profile.py --out "$OUT/profile_gpu.json" 2>&1 | grep -v "^USDT" | tee "$OUT/profile.log"
if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
    time python3 benchmarks/gpu.py --out "$OUT/speed_gpu.json" 2>&1 | tee "$OUT/bench.log"
fi
exit $tests_rc
