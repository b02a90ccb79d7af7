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
# The GPU side of the suite: every (cuda, backend) case, tests/test_gpu.py (> 2^31 elements,
# a DCGAN step in a CUDA graph, compute-sanitizer), compile, opcheck and a short property
# run (each new shape compiles Triton kernels). The CPU-only tests run in CI.
FUSEDGAN_HYPOTHESIS_EXAMPLES=30 timeout 180 python3 -m pytest tests -q --maxfail=10 -p no:cacheprovider \
    -k "cuda or gpu or compile or opcheck or properties" 2>&1 | tee "$out/tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
# Each suite writes its own JSON, so one that runs out of time loses only its own numbers.
export FUSEDGAN_BENCH_QUICK=1
for suite in bn_act:80 conv:50 dcgan:50; do
  name=${suite%%:*}
  timeout "${suite##*:}" python3 -m pytest "benchmarks/test_bench_$name.py" -q --benchmark-only -p no:cacheprovider \
      --benchmark-json="$out/bench_$name.json" 2>&1 | tail -1
done
timeout 20 python3 benchmarks/activation_memory.py --device cuda --batch 128 | tee "$out/memory.md"
# DCGAN training, two epochs of 1024 fake 64x64 images; the images/s cover both epochs, the
# first of which includes JIT compilation and torch.compile.
for run in stock:fp32 fused:fp32 compile:fp32 fused:bf16; do
  impl=${run%%:*} amp=${run##*:}
  flags=$([ "$amp" = bf16 ] && echo "--amp bf16")
  timeout 25 python3 examples/dcgan.py --data fake --img-size 64 --batch-size 128 --epochs 2 --impl "$impl" \
      $flags --out "/tmp/dcgan_${impl}_$amp" 2>&1 | grep "^done" | sed "s/^/dcgan $amp: /" | cut -c1-150
done
python3 benchmarks/report.py "$out"/bench_*.json --markdown "$out/bench.md" --plot "$out/speedup.png"
echo "tests exit code: $tests_rc"
exit "$tests_rc"
