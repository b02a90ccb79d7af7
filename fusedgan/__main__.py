"""`python -m fusedgan`: versions, and each backend with whether it is usable and why not."""

import platform

import torch

import fusedgan


def main():
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
    print("backends:")
    for name, why in fusedgan.backend_status().items():
        print(f"  {name:7s} {'usable' if why is None else 'unusable: ' + why}")


if __name__ == "__main__":
    main()
