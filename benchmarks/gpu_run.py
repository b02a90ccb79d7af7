"""The one GPU run: every question a rare, short GPU lease must answer, in order of value.

    python benchmarks/gpu_run.py               # on the GPU machine; writes everything under $OUT
    python benchmarks/gpu_run.py --dry         # anywhere: check the plan (CI runs this)
    python benchmarks/gpu_run.py --skip-build  # use the fusedgan already built here

Steps, each with its own time budget, each printing one line: PASS, FAIL or SKIP and why.
A failed build, or a GPU backend that cannot run, stops the run with FAIL at once: a run
whose CUDA tests all skip must never look green. The budgets add up to 7 minutes, under
the 8 the lease leaves for one run. `--dry` resolves every step: it checks that each test
file, test function and benchmark file a step selects still exists (and is collected by
pytest), and prints the plan with its budgets, without running anything.

Everything a step prints goes to $OUT/<step>.log (default /tmp/fusedgan-gpu); the
benchmark JSON, report and summary land there too. The last lines are the summary table:
each GPU target of BENCHMARKS.md with its measured ratio and PASS/FAIL.
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@dataclass
class Step:
    name: str
    budget_s: int
    command: list
    why: str
    env: dict = field(default_factory=dict)
    fatal: bool = False  # a FAIL here ends the run
    tests: list = field(default_factory=list)  # what --dry checks: pytest node ids (files or file::function)


def _pytest(*args):
    return [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--maxfail=20", *args]


# The benchmark suites (file, seconds of the benchmarks step each may take).
BENCH_SUITES = [("test_bench_bn_act.py", 22), ("test_bench_conv.py", 12), ("test_bench_overhead.py", 12),
                ("test_bench_gn_act.py", 14), ("test_bench_dcgan.py", 15)]
GPU_TEST_FILES = ["tests/test_batch_norm_act.py", "tests/test_conv_leaky_relu.py", "tests/test_second_order.py",
                  "tests/test_extension.py", "tests/test_module_contract.py", "tests/test_compile.py",
                  "tests/test_properties.py"]


def device_arch():
    """The GPU's own arch for TORCH_CUDA_ARCH_LIST (one arch builds fastest), e.g. "9.0"."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}.{minor}"
    except ImportError:
        pass
    return "9.0"


def steps(out):
    bench = [s for s, _ in BENCH_SUITES]
    return [
        Step("build", 90, [PYTHON, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "-q",
                            "-e", str(ROOT)],
             "compile fusedgan._C for this GPU's arch only", fatal=True,
             env={"FUSEDGAN_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": device_arch()}),
        Step("backends", 20, [PYTHON, "-m", "fusedgan", "--require", "cuda,triton"],
             "the cuda and triton backends run on this GPU and every op has a CUDA kernel", fatal=True),
        Step("smoke", 40, [PYTHON, str(ROOT / "benchmarks" / "gpu_smoke.py")],
             "each GPU backend against stock on the DCGAN layer shapes"),
        Step("gpu-tests", 75, _pytest("tests/test_gpu.py", "-k", "not sanitizer"),
             "> 2^31 elements, big grids, fp64, CUDA graphs, two devices", tests=["tests/test_gpu.py"]),
        Step("sanitizers", 80, _pytest("tests/test_gpu.py", "-k", "sanitizer"),
             "compute-sanitizer over small launches of every kernel",
             tests=["tests/test_gpu.py::test_compute_sanitizer"]),
        Step("equivalence", 30, _pytest(*GPU_TEST_FILES, "-k", "cuda"),
             "the GPU selection of the equivalence and property tests",
             env={"FUSEDGAN_HYPOTHESIS_EXAMPLES": "20"}, tests=GPU_TEST_FILES),
        Step("benchmarks", sum(b for _, b in BENCH_SUITES),
             [PYTHON, str(ROOT / "benchmarks" / "gpu_run.py"), "--benchmarks", str(out)],
             "the benchmark suites, each within its share of the budget",
             tests=[f"benchmarks/{s}" for s in bench]),
        Step("report", 10, [PYTHON, str(ROOT / "benchmarks" / "gpu_run.py"), "--summary", str(out)],
             "tables, heat map, and each GPU target of BENCHMARKS.md with its ratio"),
    ]


# BENCHMARKS.md's GPU targets: (label, op, shape, mode, dtype, provider, baseline, minimum ratio).
TARGETS = [
    ("BN+ReLU fwd+bwd vs eager", "bn+relu", "64x128x16x16", "fwd+bwd", "float32/nchw", "fused-cuda", "stock", 2.0),
    ("BN+ReLU fwd+bwd vs eager", "bn+relu", "64x128x16x16", "fwd+bwd", "float32/nchw", "fused-triton", "stock", 2.0),
    ("BN+ReLU fwd+bwd vs compile", "bn+relu", "64x128x16x16", "fwd+bwd", "float32/nchw", "fused-cuda", "compile",
     1.2),
    ("BN+ReLU fwd+bwd vs eager", "bn+relu", "256x256x64x64", "fwd+bwd", "float32/nchw", "fused-cuda", "stock", 2.0),
    ("BN+ReLU fwd+bwd vs compile", "bn+relu", "256x256x64x64", "fwd+bwd", "float32/nchw", "fused-cuda", "compile",
     1.2),
    ("Conv+LeakyReLU fwd vs eager", "conv+leaky_relu", "128x128x16x16x256", "fwd", "bfloat16/channels_last",
     "fused-triton", "stock", 1.0),
    ("BN+ReLU call vs stock (module)", "bn+relu call", "2x256x1x2", "fwd+bwd", "float32/module/train", "fused-cuda",
     "stock", 1.0),
    ("DCGAN step vs eager", "dcgan-step-dcgan", "128x3x64x64", "train step", "fp32", "fused-cuda", "stock", 1.3),
]


def summary(out):
    """Tables from the benchmark JSON, then one PASS/FAIL line per target."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    files = sorted(str(p) for p in Path(out).glob("bench_*.json"))
    if not files:
        print("FAIL report: no benchmark JSON was written")
        return 1
    info, cases = report.load(files)
    (Path(out) / "bench.md").write_text(report.markdown(info, cases))
    report.plot(cases, Path(out) / "speedup.png")
    print(report.text(info, cases))
    failed = False
    for label, op, shape, mode, dtype, provider, baseline, minimum in TARGETS:
        providers = cases.get((op, shape, mode, dtype), {})
        if provider not in providers or baseline not in providers:
            print(f"FAIL target {label} ({provider}, {shape}): not measured")
            failed = True
            continue
        ratio = providers[baseline]["median"] / providers[provider]["median"]
        ok = ratio >= minimum
        failed |= not ok
        print(f"{'PASS' if ok else 'FAIL'} target {label} ({provider}, {shape} {dtype}): {ratio:.2f}x "
              f"(target >= {minimum}x)")
    return 1 if failed else 0


def benchmarks(out):
    """Each suite in its own process and JSON, so one that runs out of time loses only itself."""
    env = dict(os.environ, FUSEDGAN_BENCH_QUICK="1")
    failed = False
    for suite, budget in BENCH_SUITES:
        command = _pytest(str(ROOT / "benchmarks" / suite), "--benchmark-only",
                          f"--benchmark-json={Path(out) / ('bench_' + suite[len('test_bench_'):-3] + '.json')}")
        try:
            run = subprocess.run(command, env=env, cwd=ROOT, timeout=budget, capture_output=True, text=True)
            status = "PASS" if run.returncode == 0 else "FAIL"
            detail = (run.stdout.strip().splitlines() or ["no output"])[-1]
        except subprocess.TimeoutExpired:
            status, detail = "FAIL", f"over its {budget} s"
        failed |= status == "FAIL"
        print(f"{status} benchmark {suite}: {detail}")
    return 1 if failed else 0


def collected(nodes):
    """How many tests pytest collects for these node ids (0 when one is missing)."""
    run = subprocess.run([PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *nodes],
                         cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        return 0
    return sum(1 for line in run.stdout.splitlines() if "::" in line)


def dry(plan):
    """Resolve every step without running it: each selection must exist and be collected."""
    failed = False
    total = 0
    for step in plan:
        total += step.budget_s
        problems = [c for c in step.command if c.endswith(".py") and not Path(c).exists()]
        for node in step.tests:
            if not (ROOT / node.split("::")[0]).exists():
                problems.append(f"{node} does not exist")
        if step.tests and not problems and collected(step.tests) == 0:
            problems.append(f"pytest collects nothing from {' '.join(step.tests)}")
        status = "FAIL" if problems else "PASS"
        failed |= bool(problems)
        print(f"{status} plan {step.name:12s} {step.budget_s:4d} s  {step.why}" +
              (f": {'; '.join(problems)}" if problems else ""))
    print(f"{'FAIL' if failed or total > 420 else 'PASS'} plan total {total} s (budget 420 s: 7 of the lease's 8 "
          f"minutes)")
    return 1 if failed or total > 420 else 0


def run_step(step, out):
    log = Path(out) / f"{step.name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    start = time.monotonic()
    try:
        with open(log, "w") as f:
            run = subprocess.run(step.command, env=env, cwd=ROOT, timeout=step.budget_s, stdout=f,
                                 stderr=subprocess.STDOUT, text=True)
        lines = log.read_text().strip().splitlines()
        passed = run.returncode == 0
        failures = [line for line in lines if line.startswith("FAIL")]
        detail = (failures[0] if failures and not passed else lines[-1]) if lines else f"exit code {run.returncode}"
    except subprocess.TimeoutExpired:
        passed, detail = False, f"over its budget of {step.budget_s} s"
    elapsed = time.monotonic() - start
    print(f"{'PASS' if passed else 'FAIL'} {step.name} ({elapsed:.0f} s of {step.budget_s}): {detail[:200]}",
          flush=True)
    if step.name in ("smoke", "benchmarks", "report"):  # their own PASS/FAIL lines, in full
        print("\n".join("    " + line for line in log.read_text().splitlines()
                        if line.startswith(("PASS", "FAIL", "SKIP"))), flush=True)
    return passed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="check the plan, run nothing")
    parser.add_argument("--skip-build", action="store_true", help="use the fusedgan already built")
    parser.add_argument("--benchmarks", metavar="OUT", help=argparse.SUPPRESS)  # the benchmarks step itself
    parser.add_argument("--summary", metavar="OUT", help=argparse.SUPPRESS)  # the report step itself
    args = parser.parse_args()
    if args.benchmarks:
        return benchmarks(args.benchmarks)
    if args.summary:
        return summary(args.summary)
    out = os.environ.get("OUT") or "/tmp/fusedgan-gpu"
    Path(out).mkdir(parents=True, exist_ok=True)
    plan = steps(out)
    if args.dry:
        return dry(plan)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(f"fusedgan GPU run, commit {commit.stdout.strip() or '?'}, results under {out}", flush=True)
    failed = False
    for step in plan:
        if step.name == "build" and args.skip_build:
            print("SKIP build: --skip-build")
            continue
        passed = run_step(step, out)
        failed |= not passed
        if not passed and step.fatal:
            print(f"FAIL run: stopped after {step.name} (see {out}/{step.name}.log)")
            return 1
    print(f"{'FAIL' if failed else 'PASS'} run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
