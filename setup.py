"""Builds fusedgan._C: the C++ CPU kernels and the emulated CUDA kernels (backend "cuda-sim":
the CUDA kernels compiled for the CPU, csrc/simt/) always, the CUDA kernels when torch is a
CUDA build and nvcc is found.

Environment switches:
  FUSEDGAN_BUILD_CUDA=0/1   force the CUDA kernels off / on (default: auto-detect)
  FUSEDGAN_BUILD_EXT=0      skip the extension entirely (pure Python; Triton and reference backends)
  FUSEDGAN_DEBUG=1          a debug build: host code at -O0 -g, device code with -lineinfo (so
                            compute-sanitizer and cuda-gdb report source lines); fusedgan._C.debug
                            is then 1 and `python -m fusedgan` says so. Slow: not for benchmarks
  TORCH_CUDA_ARCH_LIST      GPU architectures (default "8.0;9.0+PTX": A100, H100/H200, PTX for newer)
  MAX_JOBS                  parallel compile jobs (default: capped by cores and memory)
"""

import glob
import os
import platform
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    value = os.environ.get(name)
    return None if value is None else value not in ("0", "false", "False", "")


def _default_max_jobs():
    # nvcc takes 2-4 GB per job on these kernels: keep a 2-core, 24 GB machine safe.
    cores = os.cpu_count() or 1
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = 8
    return str(max(1, min(cores, int(memory_gb // 4), 8)))


def _extensions():
    if _flag("FUSEDGAN_BUILD_EXT") is False:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("fusedgan: torch is not installed, so the C++ extension is not built "
              "(install torch first, then `pip install --no-build-isolation -e .`)")
        return [], {}

    # torch guesses CUDA_HOME from the nvcc on PATH; where that nvcc is a wrapper outside
    # the toolkit, the guess compiles but cannot link (-lcudart). Prefer the standard path.
    if not os.environ.get("CUDA_HOME") and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = "/usr/local/cuda"
    os.environ.setdefault("MAX_JOBS", _default_max_jobs())

    build_cuda = _flag("FUSEDGAN_BUILD_CUDA")
    can_build_cuda = torch.version.cuda is not None and (
        cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None)
    if build_cuda is None:
        build_cuda = can_build_cuda
    elif build_cuda and not can_build_cuda:
        raise RuntimeError("FUSEDGAN_BUILD_CUDA=1 but torch is not a CUDA build or nvcc was not found "
                           "(set CUDA_HOME to the CUDA toolkit)")

    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
               + sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
               + sorted(glob.glob(os.path.join(ROOT, "csrc", "autograd", "*.cpp")))
               + sorted(glob.glob(os.path.join(ROOT, "csrc", "simt", "*.cpp")))]
    # -fopenmp: at::parallel_for is inline OpenMP code, serial without it. at::vec uses AVX2
    # only when CPU_CAPABILITY_AVX2 is defined (as ATen builds its own AVX2 kernels)
    # (fusedgan._extension refuses the cpu backend on a processor without them).
    # torch adds the C++ standard it was built with.
    # -fno-trapping-math lets GCC turn `z > 0 ? z : z * slope` into a blend (we never read FP
    # exception flags); without it the LeakyReLU loops stay scalar and branchy (10x slower).
    debug = bool(_flag("FUSEDGAN_DEBUG"))
    cxx_flags = (["-O0", "-g"] if debug else ["-O3"]) + ["-fopenmp", "-fno-trapping-math",
                                                         f"-DFUSEDGAN_DEBUG_BUILD={int(debug)}"]
    # Device code keeps its optimisations in the debug build (-G would change it beyond
    # recognition); -lineinfo maps it back to source lines.
    nvcc_flags = ["-O0", "-g", "-lineinfo"] if debug else ["-O3"]
    nvcc_flags.append(f"-DFUSEDGAN_DEBUG_BUILD={int(debug)}")
    if platform.machine() in ("x86_64", "AMD64"):
        cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"]
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))]
        extension = cpp_extension.CUDAExtension(
            "fusedgan._C", sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=["-fopenmp"],
            py_limited_api=False)
    else:
        extension = cpp_extension.CppExtension("fusedgan._C", sources, extra_compile_args={"cxx": cxx_flags},
                                               extra_link_args=["-fopenmp"])
    print(f"fusedgan: building fusedgan._C with {'CPU and CUDA' if build_cuda else 'CPU'} kernels"
          f"{' (debug build)' if debug else ''} (MAX_JOBS={os.environ['MAX_JOBS']})")
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [extension], {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
