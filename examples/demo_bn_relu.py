"""FusedBNReLU beside stock BatchNorm2d + ReLU: forward and backward, differences and times.

    python examples/demo_bn_relu.py [--shape 64 128 16 16] [--backend auto] [--steps 20]
"""

import argparse

import torch
from torch import nn
from torch.utils.benchmark import Timer

import fusedgan


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[64, 128, 16, 16], metavar=("N", "C", "H", "W"))
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "cuda", "cpu", "torch"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    C = args.shape[1]

    stock = nn.Sequential(nn.BatchNorm2d(C), nn.ReLU()).to(device)
    fused = fusedgan.FusedBNReLU(C, backend=args.backend).to(device)
    fused.load_state_dict(stock[0].state_dict())
    x = torch.randn(args.shape, device=device)
    grad = torch.randn_like(x)
    chosen = fusedgan._backends.resolve_backend(args.backend, device)
    print(f"fusedgan {fusedgan.__version__}, backend {chosen!r} on {device}, input {tuple(x.shape)}")

    results = {}
    for name, module in (("stock", stock), ("fused", fused)):
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.backward(grad)
        bn = module[0] if isinstance(module, nn.Sequential) else module
        results[name] = (y, xi.grad, bn.running_var.clone())

        def step(module=module):
            xi = x.clone().requires_grad_()
            module(xi).backward(grad)

        # Timer synchronises CUDA around the timed loop; mean seconds per step, in ms.
        results[name] += (Timer("step()", globals={"step": step}).timeit(args.steps).mean * 1e3,)

    (y_s, dx_s, rv_s, t_s), (y_f, dx_f, rv_f, t_f) = results["stock"], results["fused"]
    print(f"max |output difference|       {(y_s - y_f).abs().max().item():.3e}")
    print(f"max |input-gradient diff.|    {(dx_s - dx_f).abs().max().item():.3e}")
    print(f"max |running_var difference|  {(rv_s - rv_f).abs().max().item():.3e}")
    print(f"forward+backward: stock {t_s:.3f} ms, fused {t_f:.3f} ms, speed-up {t_s / t_f:.2f}x")


if __name__ == "__main__":
    main()
