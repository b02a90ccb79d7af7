"""Static checks of the CUDA kernels in a build of fusedgan._C (or any object with device code),
for one GPU architecture (default sm_90, the H200's), without a GPU:

- ptxas -v on the PTX embedded in the build: registers, stack frame and spills of every
  kernel instantiation. Gate: no spill stores or loads.
- cuobjdump -sass of the architecture's machine code: the call sites of the 64-bit integer
  division routine (whose body starts its reciprocal estimate with I2F.U64.RP; a 64-bit `/`
  or `%` costs tens of instructions). Gate: none in any kernel.
- The same PTX: global loads that do not take the read-only path (`ld.global` without
  `.nc`). A kernel's inputs are `const T* __restrict__` parameters, which nvcc loads with
  `ld.global.nc`; the same pointer inside a struct parameter loses `__restrict__` and
  loads plainly (docs/design.md, "Kernel arguments"). Gate: none, except in the kernels that
  update a tensor in place (IN_PLACE), which must read what they write.

    python tools/cuda_static_check.py [path/to/_C.so] [--arch sm_90]

prints a table and exits 1 when a gate fails. The tools are looked up in $CUDA_HOME/bin,
/usr/local/cuda/bin, on PATH, and in the copy Triton bundles (triton/backends/nvidia/bin).
tests/test_cuda_static.py runs it in CI.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple


def find_tool(name):
    """The path of a CUDA binary tool, or None."""
    folders = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin"), "/usr/local/cuda/bin"]
    for folder in folders:
        if os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    if shutil.which(name):
        return shutil.which(name)
    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        return bundled if os.access(bundled, os.X_OK) else None
    except ImportError:
        return None


# Kernels that read and write one tensor (conv's bias + activation over the convolution's
# output): their loads of it cannot be read-only.
IN_PLACE = {"bias_leaky_relu_kernel"}


class Kernel(NamedTuple):
    name: str  # demangled, without parameters
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    division_sites: int
    plain_loads: int  # ld.global without .nc in the kernel's PTX


def _run(command, **kwargs):
    run = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if run.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {(run.stdout + run.stderr).strip()}")
    return run.stdout


def plain_loads(ptx):
    """{mangled kernel name: global loads without .nc} in one PTX file's entry functions."""
    entries = re.split(r"^\s*(?:\.visible\s+|\.weak\s+)?\.entry\s+", ptx, flags=re.M)[1:]
    return {entry.split("(", 1)[0]: len(re.findall(r"\bld\.global\.(?!nc\b)", entry)) for entry in entries}


def ptxas_report(binary, arch, cuobjdump, ptxas):
    """{mangled kernel name: (registers, stack bytes, spill store bytes, spill load bytes,
    plain global loads)} from ptxas -v over the binary's embedded PTX for `arch`."""
    report = {}
    with tempfile.TemporaryDirectory() as folder:
        _run([cuobjdump, "-xptx", "all", os.path.abspath(binary)], cwd=folder)
        files = sorted(glob.glob(os.path.join(folder, f"*.{arch}.ptx")))
        if not files:
            raise RuntimeError(f"{binary} embeds no PTX for {arch} (build it with TORCH_CUDA_ARCH_LIST "
                               f"including {arch[3:4]}.{arch[4:]}+PTX)")
        for ptx in files:
            with open(ptx) as f:
                loads_of = plain_loads(f.read())
            text = subprocess.run([ptxas, f"-arch={arch}", "-O3", "-v", ptx, "-o", os.devnull],
                                  capture_output=True, text=True, check=True).stderr  # -v reports on stderr
            for name, body in re.findall(r"Compiling entry function '(\S+)'.*?\n(.*?)Compile time", text, re.S):
                stack, stores, loads = map(int, re.search(
                    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", body).groups())
                registers = int(re.search(r"Used (\d+) registers", body).group(1))
                report[name] = (registers, stack, stores, loads, loads_of.get(name, 0))
    return report


def division_sites(sass):
    """{mangled kernel name: calls of (or inlined copies of) the 64-bit integer division
    routine} in cuobjdump -sass output."""
    sites = {}
    for name, body in re.findall(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", sass, re.S):
        code = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", body)]
        calls = [int(t, 16) for _, op in code for t in re.findall(r"CALL\.REL\S*\s+0x([0-9a-f]+)", op)]
        routines, inside = set(), set()
        for target in set(calls):
            span = []
            for address, op in code:
                if address >= target:
                    span.append((address, op))
                    if op.startswith("RET"):
                        break
            inside.update(address for address, _ in span)
            if any("I2F.U64.RP" in op for _, op in span):
                routines.add(target)
        inline = sum("I2F.U64.RP" in op for address, op in code if address not in inside)
        sites[name] = sum(target in routines for target in calls) + inline
    return sites


def _demangle(names):
    cxxfilt = shutil.which("c++filt")
    plain = _run([cxxfilt], input="\n".join(names)).splitlines() if cxxfilt else list(names)
    return [re.sub(r"\(anonymous namespace\)::|fusedgan::|^void ", "", p).split("(")[0] for p in plain]


def check(binary, arch="sm_90"):
    """The Kernel rows of `binary` for `arch`."""
    cuobjdump, ptxas = find_tool("cuobjdump"), find_tool("ptxas")
    if not cuobjdump or not ptxas:
        raise RuntimeError("cuobjdump and ptxas not found (CUDA_HOME/bin, PATH, or Triton's bundled copies)")
    resources = ptxas_report(binary, arch, cuobjdump, ptxas)
    divisions = division_sites(_run([cuobjdump, "-sass", "-arch", arch, os.path.abspath(binary)]))
    names = sorted(resources)
    rows = []
    for name, plain in zip(names, _demangle(names)):
        registers, stack, spill_stores, spill_loads, loads = resources[name]
        rows.append(Kernel(plain, registers, stack, spill_stores, spill_loads, divisions.get(name, 0), loads))
    return rows


def failures(kernels):
    """What breaks the gates, one line per kernel."""
    return [f"{k.name}: {k.spill_stores} bytes spill stores, {k.spill_loads} bytes spill loads, "
            f"{k.division_sites} 64-bit division sites, {k.plain_loads} plain global loads" for k in kernels
            if k.spill_stores or k.spill_loads or k.division_sites
            or (k.plain_loads and k.name.split("<")[0] not in IN_PLACE)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", nargs="?", help="default: the fusedgan._C that `import fusedgan` loads")
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args(argv)
    binary = args.binary
    if binary is None:
        import importlib.util

        binary = importlib.util.find_spec("fusedgan._C").origin
    kernels = check(binary, args.arch)
    print(f"{'kernel':<72} {'regs':>4} {'stack':>5} {'spill st/ld':>11} {'div64':>5} {'plain ld':>8}")
    for k in sorted(kernels):
        print(f"{k.name:<72} {k.registers:>4} {k.stack:>5} {f'{k.spill_stores}/{k.spill_loads}':>11} "
              f"{k.division_sites:>5} {k.plain_loads:>8}")
    bad = failures(kernels)
    print(f"{len(kernels)} kernels for {args.arch}; " + (f"{len(bad)} fail the gates:" if bad else "all pass"))
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
