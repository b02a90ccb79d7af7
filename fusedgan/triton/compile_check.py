"""Offline GPU compile check of every Triton kernel of fusedgan: no GPU needed.

    python -m fusedgan.triton.compile_check [--jobs N]

The launchers are planned on meta tensors (nothing is allocated, nothing runs) over a
set of cases: every input dtype, fp16/bf16 with fp32 or their own parameters, each
activation, train and eval, forward and backward, NCHW, channels_last, (N, C),
(N, C, L), a channel slice, an expanded gradient, one-pass, tiled and int64-indexed
sizes (BatchNorm, and GroupNorm's one-pass and split paths: GN_SHAPES), and every conv
tile config with TF32 on and off. Each distinct launch is bound
by Triton's own argument specialisation (as a real launch binds it) and compiled with
triton.compile for GPUTarget("cuda", 80, 32) and ("cuda", 90, 32); ptxas -v (Triton's
own, with Triton's flags) reports registers and spills. One table is printed: per
kernel, target and config, the variants compiled, the most registers, spill bytes and
shared memory.

Exits non-zero on any compile error, any spill, a 64-bit integer division or remainder
in a variant with int32 offsets, a kernel of fusedgan.triton that no case reaches
(kernels are found by introspection: every @triton.jit function that no other one
calls), or a float argument typed other than fp64 in a launch on fp64 tensors.
TRITON_INTERPRET must be unset (the check re-runs itself without it otherwise).
"""

import argparse
import contextlib
import importlib
import io
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch

ARCHS = (80, 90)


# ---------------------------------------------------------------------------------------
# Cases: the launchers' own plans on meta tensors
# ---------------------------------------------------------------------------------------

# (input dtype, parameter dtype)
DTYPES = [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.float16, torch.float32),
          (torch.float16, torch.float16), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)]


def _meta(shape, dtype, layout="contiguous"):
    """A meta tensor of `shape` in one of the layouts the launchers meet."""
    if layout == "channels_last":
        return torch.empty(shape, dtype=dtype, device="meta").to(memory_format=torch.channels_last)
    if layout == "channel_slice":  # every other channel: strided, and not 16-byte aligned
        return torch.empty((shape[0], 2 * shape[1], *shape[2:]), dtype=dtype, device="meta")[:, 1::2]
    return torch.empty(shape, dtype=dtype, device="meta")


# (name, shape, layout, activations, all dtypes): one-pass, tiled and int64-indexed sizes of
# each layout the BatchNorm launchers see. LeakyReLU (the most work) runs everywhere, every
# activation on one-pass NCHW and tiled channels_last; fp16 and bf16 with their own
# parameters (which change only the parameters' pointer types) on the NCHW and
# channels_last sizes. "nchw" and "channels_last-tiled" also take the gradient of y.sum()
# (an expanded scalar, strides 0).
ALL_ACTIVATIONS, LEAKY_RELU = (0, 1, 2), (2,)
BN_SHAPES = [
    ("nchw", (8, 16, 8, 8), "contiguous", ALL_ACTIVATIONS, True),
    ("nchw-odd", (3, 7, 11, 13), "contiguous", LEAKY_RELU, False),
    ("nchw-tiled", (64, 32, 32, 32), "contiguous", LEAKY_RELU, True),
    ("nchw-int64", (33, 2, 8192, 4096), "contiguous", LEAKY_RELU, False),
    ("channels_last", (8, 64, 8, 8), "channels_last", LEAKY_RELU, True),
    ("channels_last-tiled", (64, 64, 32, 32), "channels_last", ALL_ACTIVATIONS, True),
    ("channels_last-int64", (64, 64, 256, 256 * 9), "channels_last", LEAKY_RELU, False),
    ("nc", (64, 128), "contiguous", LEAKY_RELU, False),
    ("nc-tiled", (65536, 64), "contiguous", LEAKY_RELU, False),
    ("ncl", (16, 32, 100), "contiguous", LEAKY_RELU, False),
    ("channel_slice", (4, 5, 6, 7), "channel_slice", LEAKY_RELU, False),
]


def _bn_cases():
    from fusedgan.triton import batch_norm_act as bn

    for (dtype, param_dtype) in DTYPES:
        for name, shape, layout, activations, all_dtypes in BN_SHAPES:
            if dtype in (torch.float16, torch.bfloat16) and param_dtype == dtype and not all_dtypes:
                continue
            x = _meta(shape, dtype, layout)
            C = shape[1]
            params = [torch.empty(C, dtype=param_dtype, device="meta") for _ in range(4)]
            stats = [torch.empty(C, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                                 device="meta") for _ in range(2)]
            for act in activations:
                for training in (True, False):
                    label = f"{name} {str(dtype)[6:]}/{str(param_dtype)[6:]} act{act} {'train' if training else 'eval'}"
                    yield label, bn.plan_forward(x, *params, training, 1e-5, act, 0.2)[1]
                    dys = [("", torch.empty_like(x))]
                    if name in ("nchw", "channels_last-tiled"):
                        dys.append((" expanded-dy", torch.empty((), dtype=dtype, device="meta").expand(x.shape)))
                    for dy_name, dy in dys:
                        yield label + " backward" + dy_name, bn.plan_backward(
                            dy, x, *params[:2], *stats, training, 1e-5, act, 0.2)[1]


# (name, shape, groups, layout, activations, dtypes, passes): GroupNorm's one-pass path
# (also at its largest, 16 warps: forward and backward have their own sizes) and split
# path, NCHW, channels_last (InstanceNorm's groups of one channel side by side, and groups
# of two), (N, C), (N, C, L), and the int64-indexed split path. Every activation (in fp32)
# on one-pass NCHW and split channels_last, LeakyReLU elsewhere; fp16 and bf16 with fp32
# parameters and with their own (which change only the parameters' pointer types). "nchw"
# and "channels_last-split" also take the gradient of y.sum() (an expanded scalar), in fp32.
FP32, FP64, FP16_FP32, FP16, BF16_FP32, BF16 = DTYPES
BOTH, FORWARD, BACKWARD = (True, True), (True, False), (False, True)
GN_SHAPES = [
    ("nchw", (4, 32, 8, 8), 8, "contiguous", ALL_ACTIVATIONS, [FP32, FP64, BF16_FP32, FP16], BOTH),
    ("nchw-split", (2, 16, 128, 128), 4, "contiguous", LEAKY_RELU, [FP32, FP64, FP16_FP32, BF16], BOTH),
    ("nchw-one-pass-largest", (1, 8, 128, 128), 8, "contiguous", LEAKY_RELU, [FP32, BF16_FP32], FORWARD),
    ("nchw-one-pass-largest", (1, 8, 64, 128), 8, "contiguous", LEAKY_RELU, [FP32, BF16_FP32], BACKWARD),
    ("channels_last", (4, 64, 8, 8), 64, "channels_last", LEAKY_RELU, [FP32, BF16_FP32], BOTH),
    ("channels_last-split", (2, 64, 64, 64), 32, "channels_last", ALL_ACTIVATIONS, [FP32, FP64, BF16_FP32], BOTH),
    ("nc", (64, 128), 8, "contiguous", LEAKY_RELU, [FP32], BOTH),
    ("ncl", (4, 32, 100), 4, "contiguous", LEAKY_RELU, [FP32], BOTH),
    ("nchw-int64", (33, 2, 8192, 4096), 1, "contiguous", LEAKY_RELU, [FP32, BF16_FP32], BOTH),
]


def _gn_cases():
    from fusedgan.triton import group_norm_act as gn

    for name, shape, groups, layout, activations, dtypes, (forward, backward) in GN_SHAPES:
        for dtype, param_dtype in dtypes:
            x = _meta(shape, dtype, layout)
            params = [torch.empty(shape[1], dtype=param_dtype, device="meta") for _ in range(2)]
            stats = [torch.empty((shape[0], groups), dtype=torch.float64 if dtype == torch.float64 else
                                 torch.float32, device="meta") for _ in range(2)]
            for act in activations if dtype == torch.float32 else LEAKY_RELU:
                label = f"gn {name} {str(dtype)[6:]}/{str(param_dtype)[6:]} act{act}"
                if forward:
                    yield label, gn.plan_forward(x, *params, groups, 1e-5, act, 0.2)[1]
                dys = [("", torch.empty_like(x))] if backward else []
                if name in ("nchw", "channels_last-split") and dtype == torch.float32 and act in LEAKY_RELU:
                    dys.append((" expanded-dy", torch.empty((), dtype=dtype, device="meta").expand(x.shape)))
                for dy_name, dy in dys:
                    yield label + " backward" + dy_name, gn.plan_backward(dy, x, *params, *stats, groups, 1e-5, act,
                                                                          0.2)[1]


# (name, x shape, weight shape, stride, padding, layouts, also without bias): DCGAN's 4x4
# stride-2 layers, 3x3 (Cin = 3) and 1x1, and an input past 2^31 elements.
BOTH_LAYOUTS = ("contiguous", "channels_last")
CONV_SHAPES = [
    ("4x4s2", (8, 64, 16, 16), (128, 64, 4, 4), 2, 1, BOTH_LAYOUTS, True),
    ("3x3", (4, 3, 32, 32), (64, 3, 3, 3), 1, 1, ("contiguous",), False),
    ("1x1", (4, 48, 8, 8), (40, 48, 1, 1), 1, 0, ("channels_last",), False),
    ("4x4s2-int64", (1024, 64, 256, 256), (64, 64, 4, 4), 2, 1, ("contiguous",), False),
]


def _conv_cases():
    from fusedgan.triton import conv_leaky_relu as conv

    for dtype, tf32 in ((torch.float32, True), (torch.float32, False), (torch.float16, False),
                        (torch.bfloat16, False)):
        torch.backends.cudnn.allow_tf32 = tf32
        for name, x_shape, w_shape, stride, padding, layouts, no_bias in CONV_SHAPES:
            for layout in layouts:
                x, w = _meta(x_shape, dtype, layout), _meta(w_shape, dtype)
                for bias in (torch.empty(w_shape[0], dtype=dtype, device="meta"), None)[:1 + no_bias]:
                    y = conv.conv_output(x, w, stride, padding, 1)
                    for config in conv.configs(x):
                        label = (f"{name} {layout} {str(dtype)[6:]}{' tf32' if tf32 else ''} "
                                 f"{'bias' if bias is not None else 'no-bias'}")
                        yield label, [conv.plan_forward(x, w, bias, y, stride, padding, 1, 0.2, config)]
    for dtype, _ in DTYPES[:3:2] + DTYPES[1:2] + DTYPES[4:5]:
        for name, shape, layout in [("nchw", (8, 64, 16, 16), "contiguous"),
                                    ("channels_last", (8, 64, 16, 16), "channels_last"),
                                    ("nchw-int64", (33, 2, 8192, 4096), "contiguous"),
                                    ("expanded", (8, 64, 16, 16), "expanded")]:
            y = _meta(shape, dtype, "contiguous" if layout == "expanded" else layout)
            dy = torch.empty((), dtype=dtype, device="meta").expand(shape) if layout == "expanded" else \
                torch.empty_like(y)
            for has_bias in (True, False):
                yield f"grad_bias {name} {str(dtype)[6:]}", conv.plan_grad_bias(dy, y, 0.2, has_bias)[1]


def cases():
    """(label, launches) of every case."""
    allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        yield from _bn_cases()
        yield from _gn_cases()
        yield from _conv_cases()
    finally:
        torch.backends.cudnn.allow_tf32 = allow_tf32


def kernels():
    """{name: kernel}: every @triton.jit function of fusedgan.triton that no other one calls."""
    import triton

    import fusedgan.triton as package

    functions = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, triton.runtime.jit.JITFunction):
                functions[value.__name__] = value
    called = {name for name in functions for other in functions.values()
              if other.__name__ != name and re.search(rf"\b{name}\s*\(", other.src)}
    return {name: fn for name, fn in functions.items() if name not in called}


# ---------------------------------------------------------------------------------------
# Binding and compiling, as a launch does
# ---------------------------------------------------------------------------------------


class _Pointer:
    """A meta tensor as Triton's argument specialisation sees it: a dtype and an address
    (a fresh allocation is 16-byte aligned; a view adds its offset)."""

    def __init__(self, tensor):
        self.dtype = tensor.dtype
        self._address = 1024 + tensor.storage_offset() * tensor.element_size()

    def data_ptr(self):
        return self._address


def _bind(launch, target):
    """(signature, constexprs, attrs, options) of `launch` on `target`: Triton's binder,
    as JITFunction.run uses it."""
    from triton import knobs
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.constexprs, debug=False, instrumentation_mode=knobs.compilation.instrumentation_mode)
    args = [_Pointer(a) if isinstance(a, torch.Tensor) else a for a in launch.args]
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def _config_label(launch):
    """The tile config: block sizes, index width, warps and stages."""
    c = launch.constexprs
    parts = [f"{k[6:].lower()}{v}" for k, v in c.items() if k.startswith("BLOCK_")]
    if "IDX" in c:
        parts.append("i64" if "64" in str(c["IDX"]) else "i32")
    if c.get("ONE_PASS"):
        parts.append("one-pass")
    parts.append(f"w{c.get('num_warps', 4)}")
    if "num_stages" in c:
        parts.append(f"s{c['num_stages']}")
    return " ".join(parts)


def _jobs():
    """(kernel name, config label, case label, launch, arch) of every distinct compile, and
    the labels of launches whose float arguments are not fp64 on fp64 tensors."""
    from triton.backends.compiler import GPUTarget

    jobs, seen, wrong_floats = [], set(), []
    for label, launches in cases():
        for launch in launches:
            for arch in ARCHS:
                signature, constexprs, attrs, options = _bind(launch, GPUTarget("cuda", arch, 32))
                if arch == ARCHS[0] and any(getattr(a, "dtype", None) == torch.float64 for a in launch.args):
                    floats = {n: t for n, t in signature.items() if t in ("fp16", "bf16", "fp32", "fp64")}
                    if any(t != "fp64" for t in floats.values()):
                        wrong_floats.append(f"{launch.kernel.__name__} ({label}): {floats}")
                key = (launch.kernel.__name__, arch, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
                       repr(sorted(attrs.items())), options.num_warps, options.num_stages)
                if key not in seen:
                    seen.add(key)
                    jobs.append((launch.kernel.__name__, _config_label(launch), label, launch, arch))
    return jobs, wrong_floats


_WORKER_JOBS = None


def _worker_init():
    global _WORKER_JOBS
    _WORKER_JOBS = _jobs()[0]


def _compile(index):
    """Compile job `index`: (index, registers, spill bytes, shared memory, error or None).
    An int32-indexed variant with a 64-bit integer division or remainder (a subroutine of
    tens of instructions) is an error too."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, _, _, launch, arch = _WORKER_JOBS[index]
    target = GPUTarget("cuda", arch, 32)
    try:
        signature, constexprs, attrs, options = _bind(launch, target)
        knobs.nvidia.dump_ptxas_log = True
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
        report = log.getvalue()
        registers = int(re.search(r"Used (\d+) registers", report).group(1))
        spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
        divisions = re.findall(r"\b(?:div|rem)\.[su]64\b", kernel.asm["ptx"])
        if divisions and "64" not in str(launch.constexprs.get("IDX", "int64")):
            return index, registers, spills, kernel.metadata.shared, f"{len(divisions)} 64-bit divisions or remainders"
        return index, registers, spills, kernel.metadata.shared, None
    except Exception as error:  # a compile error is a result to report, not a crash
        return index, 0, 0, 0, f"{type(error).__name__}: {str(error)[-2000:]}"


def check(jobs_count):
    start = time.time()
    jobs, wrong_floats = _jobs()
    found = kernels()
    unreached = sorted(set(found) - {job[0] for job in jobs})
    with ProcessPoolExecutor(jobs_count, multiprocessing.get_context("spawn"), _worker_init) as pool:
        results = list(pool.map(_compile, range(len(jobs)), chunksize=4))
    rows, failures = {}, []
    for index, registers, spills, shared, error in results:
        name, config, label, _, arch = jobs[index]
        if error or spills:
            failures.append(f"{name} sm_{arch} [{config}] {label}: " + (error or f"{spills} bytes of spills"))
        row = rows.setdefault((name, arch, config), [0, 0, 0, 0])
        row[0] += 1
        row[1], row[2], row[3] = max(row[1], registers), max(row[2], spills), max(row[3], shared)
    header = (f"{'kernel':32s} {'target':6s} {'config':36s} {'variants':>8s} {'registers':>9s} {'spills':>6s} "
              f"{'smem':>6s}")
    print(header)
    print("-" * len(header))
    for (name, arch, config), (count, registers, spills, shared) in sorted(rows.items()):
        print(f"{name:32s} sm_{arch:<3d} {config:36s} {count:8d} {registers:9d} {spills:6d} {shared:6d}")
    print(f"{len(jobs)} variants of {len(found)} kernels compiled for sm_{'/sm_'.join(map(str, ARCHS))} in "
          f"{time.time() - start:.0f} s; most registers {max(r[1] for r in rows.values())}, "
          f"spill bytes {sum(r[2] for r in rows.values())}")
    problems = failures + [f"kernel {name} is reached by no case" for name in unreached] + \
        [f"float argument not fp64 on fp64 tensors: {w}" for w in wrong_floats]
    for problem in problems:
        print("FAIL", problem)
    return 1 if problems else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="compile processes (default: the cores)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter replaces @triton.jit: run again without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = sys.argv[1:] if argv is None else argv
        return subprocess.run([sys.executable, "-m", "fusedgan.triton.compile_check", *argv], env=env).returncode
    # A private cache: every variant is compiled (and so reported by ptxas), none is kept.
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        return check(max(args.jobs, 1))


if __name__ == "__main__":
    sys.exit(main())
