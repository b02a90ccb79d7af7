"""A full DCGAN training step (D step, then G step, Adam) per provider: stock eager,
fusedgan.convert with each fused backend, torch.compile of the stock models.

    pytest benchmarks/ --benchmark-only

GPU: 64x64 images at batch 128, fp32 and bf16 autocast. CPU: 32x32 at batch 64, fp32.
"""

import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICE, GPU, QUICK, fused_backends, run_benchmark

import fusedgan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan_models  # noqa: E402

IMG, BATCH = (64, 128) if GPU else (32, 64)
PROVIDERS = ["stock", "compile"] + [f"fused-{b}" for b in fused_backends()]
PRECISIONS = ["fp32", "bf16"] if GPU else ["fp32"]


def make_step(arch, provider, precision):
    torch.manual_seed(0)
    generator, discriminator, noise_shape = dcgan_models.build(arch, 100, IMG, 3)
    if provider.startswith("fused-"):
        backend = provider.split("-", 1)[1]
        generator, discriminator = (fusedgan.convert(m, backend=backend) for m in (generator, discriminator))
    generator, discriminator = generator.to(DEVICE), discriminator.to(DEVICE)
    opt_g = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    if provider == "compile":
        generator, discriminator = torch.compile(generator), torch.compile(discriminator)
    real = torch.rand(BATCH, 3, IMG, IMG, device=DEVICE) * 2 - 1
    amp_dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        noise = torch.randn(BATCH, *noise_shape, device=DEVICE)
        dcgan_models.gan_step(generator, discriminator, opt_g, opt_d, real, noise, amp_dtype=amp_dtype)

    return step


@pytest.mark.parametrize("arch", ["dcgan"] if QUICK else ["dcgan", "seed"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_dcgan_training_step(benchmark, arch, provider, precision):
    run_benchmark(benchmark, make_step(arch, provider, precision), rounds=15 if GPU else 5, iterations=1,
                  op=f"dcgan-step-{arch}", shape=[BATCH, 3, IMG, IMG], provider=provider, mode="train step",
                  dtype=precision)
    benchmark.extra_info.update(images_per_s=BATCH / benchmark.stats.stats.median)
