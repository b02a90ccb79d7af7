#!/usr/bin/env bash
# The one GPU script (device machine: no internet, its own torch and triton): build, smoke
# check, GPU tests, sanitizers, equivalence, benchmarks and the target summary, each step
# with its own budget and a PASS/FAIL/SKIP line (benchmarks/gpu_run.py says how).
#   bash benchmarks/run_gpu.sh            (writes results under ${OUT:-/tmp/fusedgan-gpu})
#   bash benchmarks/run_gpu.sh --dry      (check the plan without a GPU; CI does)
set -uo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_run.py "$@"
