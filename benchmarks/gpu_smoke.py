"""The first minute of a GPU run: does each GPU backend agree with stock at all?

    python benchmarks/gpu_smoke.py [--backends cuda,triton]

For each backend: the DCGAN BatchNorm+activation layer shapes (one-pass and tiled paths),
fp32 and bf16, NCHW and channels_last, train and eval, forward and backward; and the DCGAN
discriminator's Conv2d+LeakyReLU layers. Each result is held to the rule of
docs/numerics.md against stock in float64: at most twice stock's own error at that
precision, plus 1e-5 (fp32) or 1e-3 (bf16) relative. Prints one PASS/FAIL line per backend
(the worst case, or the first failure) and exits non-zero on any failure.
"""

import argparse
import sys

import torch
from torch import nn

import fusedgan

BN_SHAPES = [(64, 512, 4, 4), (64, 128, 16, 16), (128, 64, 32, 32)]  # the last takes the tiled path
CONV_LAYERS = [(64, 128, 32), (256, 512, 8)]  # (in, out, size) of the discriminator, 4x4 stride 2
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-3}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def outputs(model, x, grad):
    x = x.detach().requires_grad_()
    y = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    return [y, *torch.autograd.grad(y, [x, *params], grad.to(y.dtype))]


def check(fused, stock, stock_dtype, x, grad, what):
    """The worst (error / allowed) over the output and every gradient; raises on a failure.
    stock runs in float64 (the reference), then in stock_dtype on x (its own error)."""
    dtype = x.dtype
    reference = outputs(stock.double(), x.double(), grad.double())
    theirs = outputs(stock.to(stock_dtype), x, grad)
    ours = outputs(fused, x, grad)
    worst = 0.0
    for name, o, t, r in zip(["y", "dx", "dweight", "dbias"], ours, theirs, reference):
        allowed = 2 * rel(t, r) + FLOOR[dtype]
        error = rel(o, r)
        if not error <= allowed:
            raise AssertionError(f"{what}: {name} error {error:.2e} > allowed {allowed:.2e}")
        worst = max(worst, error / allowed)
    return worst


def bn_cases(backend):
    for shape in BN_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for layout in ("nchw", "channels_last"):
                for training in (True, False):
                    activation = "relu" if (dtype, layout) == (torch.float32, "nchw") else "leaky_relu"
                    yield shape, dtype, layout, training, activation


def run_backend(backend):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    worst, cases = 0.0, 0
    for shape, dtype, layout, training, activation in bn_cases(backend):
        torch.manual_seed(cases)
        C = shape[1]
        fused = (fusedgan.FusedBNReLU(C, backend=backend) if activation == "relu"
                 else fusedgan.FusedBNLeakyReLU(C, 0.2, backend=backend)).cuda()
        with torch.no_grad():
            fused.weight.uniform_(0.5, 1.5), fused.bias.uniform_(-0.5, 0.5)
            fused.running_mean.uniform_(-0.5, 0.5), fused.running_var.uniform_(0.5, 2)
        stock = nn.Sequential(nn.BatchNorm2d(C), nn.ReLU() if activation == "relu" else nn.LeakyReLU(0.2)).cuda()
        stock[0].load_state_dict(fused.state_dict())
        fused.train(training), stock.train(training)
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = (torch.randn(shape, device="cuda") * 2 + 0.5).to(dtype).contiguous(memory_format=memory_format)
        grad = torch.randn(shape, device="cuda").to(dtype)
        what = f"{backend} bn+{activation} {'x'.join(map(str, shape))} {str(dtype)[6:]} {layout} " \
               f"{'train' if training else 'eval'}"
        worst = max(worst, check(fused, stock, torch.float32, x, grad, what))  # fp32 parameters, as fused
        cases += 1
    for cin, cout, size in CONV_LAYERS:
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(cases)
            fused = fusedgan.FusedConvLeakyReLU(cin, cout, 4, 2, 1, negative_slope=0.2, backend=backend).cuda()
            stock = nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)).cuda()
            stock[0].load_state_dict(fused.state_dict())
            fused.to(dtype)
            layout = torch.channels_last if dtype == torch.bfloat16 else torch.contiguous_format
            x = torch.randn(16, cin, size, size, device="cuda").to(dtype).contiguous(memory_format=layout)
            grad = torch.randn(16, cout, size // 2, size // 2, device="cuda").to(dtype)
            what = f"{backend} conv+leaky_relu {cin}->{cout}@{size} {str(dtype)[6:]}"
            worst = max(worst, check(fused, stock, dtype, x, grad, what))
            cases += 1
    return cases, worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="cuda,triton")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("FAIL smoke: no CUDA GPU is visible")
        return 1
    failed = False
    for backend in args.backends.split(","):
        try:
            cases, worst = run_backend(backend)
            print(f"PASS smoke {backend}: {cases} cases, worst error {worst:.2f} of the allowed")
        except Exception as error:  # one line per backend, whatever broke
            failed = True
            print(f"FAIL smoke {backend}: {type(error).__name__}: {str(error)[:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
