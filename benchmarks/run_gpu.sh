#!/usr/bin/env bash
# The one GPU script (device machine: no internet, its own torch and triton).
# Installs fusedgan without downloading anything, runs the test suite on the GPU, then
# the GPU benchmarks, and prints a short table last. Sized for well under 10 minutes.
#   bash benchmarks/run_gpu.sh            (writes results under ${OUT:-/tmp/fusedgan-gpu})
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/fusedgan-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-index --no-deps --no-build-isolation -q -e . 2>&1 | tail -5
python3 -m fusedgan | tee "$out/env.txt"
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$out/env.txt"
timeout 300 python3 -m pytest tests -q -x -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
timeout 240 python3 -m pytest benchmarks -q --benchmark-only -p no:cacheprovider \
    --benchmark-json="$out/bench.json" --benchmark-columns=mean,stddev,rounds 2>&1 | tail -5
# DCGAN training, two epochs of 1024 fake 64x64 images per implementation and precision; the
# images/s cover both epochs, the first of which includes JIT compilation and torch.compile.
for amp in fp32 bf16; do
  for impl in stock fused compile; do
    flags=$([ "$amp" = bf16 ] && echo "--amp bf16")
    timeout 150 python3 examples/dcgan.py --data fake --img-size 64 --batch-size 128 --epochs 2 --impl "$impl" \
        $flags --out "$out/dcgan_${impl}_$amp" 2>&1 | grep "^done" | sed "s/^/dcgan $amp: /" | cut -c1-150
  done
done
python3 benchmarks/summary.py "$out/bench.json"
echo "tests exit code: $tests_rc"
exit "$tests_rc"
