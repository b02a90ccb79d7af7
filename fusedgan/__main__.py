"""`python -m fusedgan`: versions, and each backend with whether it is usable and why not.

`python -m fusedgan --require cuda,triton` also exits with status 1 unless each named
backend runs on this machine's GPU and (for cuda) every fusedgan op has a CUDA kernel.
"""

import argparse
import platform
import sys

import torch

import fusedgan
from fusedgan._ops import FAMILIES, LAYERS


def require(backends):
    """The reasons the named backends cannot run on CUDA tensors here (empty: all can)."""
    from fusedgan import _extension
    from fusedgan._backends import why_unusable

    problems = [f"{name}: {why}" for name in backends if (why := why_unusable(name, "cuda"))]
    if "cuda" in backends and _extension._load_error is None:
        problems += [f"fusedgan._C has no CUDA kernels for {LAYERS[family]}" for family in FAMILIES
                     if not _extension._HAS_KERNELS[(family, "cuda")]]
    return problems


def _extension_build():
    from fusedgan import _extension

    if _extension._load_error is not None:
        return "not loaded"
    import fusedgan._C as extension

    return "debug build (FUSEDGAN_DEBUG=1: -O0 -g, -lineinfo)" if getattr(extension, "debug", 0) else "release build"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--require", metavar="BACKENDS", help="comma-separated backends that must run on the GPU")
    args = parser.parse_args()
    try:
        import triton

        triton_version = triton.__version__
    except Exception as error:
        triton_version = f"not importable ({type(error).__name__})"
    cuda = torch.version.cuda or "none (CPU build of torch)"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU visible"
    print(f"fusedgan {fusedgan.__version__}")
    print(f"python   {platform.python_version()}")
    print(f"torch    {torch.__version__} (CUDA {cuda}; {gpu})")
    print(f"triton   {triton_version}")
    print(f"_C       {_extension_build()}")
    print("backends:")
    for name, why in fusedgan.backend_status().items():
        print(f"  {name:7s} {'usable' if why is None else 'unusable: ' + why}")
    print("layers and the backends that run them here:")
    for family, layer in LAYERS.items():
        usable = [name for name, why in fusedgan.backend_status(family).items() if why is None]
        print(f"  {layer:38s} {', '.join(usable)}")
    if args.require:
        problems = require(args.require.split(","))
        print("\n".join(f"FAIL required: {p}" for p in problems) or f"PASS required backends: {args.require}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
