"""Every fusedgan GPU kernel once, on small inputs, for compute-sanitizer (tests/test_gpu.py).

    python tests/_sanitize_kernels.py cuda triton     (the backends to run)

Covers the BatchNorm forward and backward on the one-pass path and the split two-stage
path, NCHW and channels_last, fp32 and bf16, train and eval, and the convolution's
bias+activation and fused backward kernels.
"""

import sys

import torch

import fusedgan


def run(backend):
    torch.manual_seed(0)
    for shape in ((4, 3, 5, 6), (8, 2, 96, 96)):  # one channel slice in registers; split across blocks
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                x = torch.randn(shape, device="cuda", dtype=dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                layer = fusedgan.FusedBNLeakyReLU(shape[1], 0.2, backend=backend).cuda()
                for training in (True, False):
                    layer.train(training)
                    x_in = x.detach().requires_grad_(True)
                    layer(x_in).float().square().sum().backward()
    conv = fusedgan.FusedConvLeakyReLU(3, 5, 3, padding=1, negative_slope=0.2, backend=backend).cuda()
    for channels_last in (False, True):
        x = torch.randn(2, 3, 9, 7, device="cuda")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        conv(x.requires_grad_(True)).square().sum().backward()
    torch.cuda.synchronize()


if __name__ == "__main__":
    for backend in sys.argv[1:]:
        run(backend)
    print(f"ran every kernel of {' '.join(sys.argv[1:])}")
