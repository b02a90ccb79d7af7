"""Activation memory a DCGAN keeps for backward: stock, fused, and fused with
memory_saving=True (BatchNorm+LeakyReLU written over the convolution's output).

    python benchmarks/activation_memory.py [--device cpu|cuda] [--batch 64] [--img-size 64]

CPU: autograd's saved tensors, counted through torch.autograd.graph.saved_tensors_hooks
(each storage once). GPU: the growth of torch.cuda.max_memory_allocated over the forward
pass. Both for the discriminator and the generator of each example architecture, one
forward in training mode.
"""

import argparse
import sys
from pathlib import Path

import torch

import fusedgan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan_models  # noqa: E402


def saved_bytes(model, x):
    """Bytes of the distinct storages autograd saves for backward in one forward."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del out
    return sum(n for ptr, n in storages.items() if ptr not in parameters and ptr != x.untyped_storage().data_ptr())


def peak_bytes(model, x):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = model(x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def measure(device, batch, img_size):
    results = []
    for arch in ("dcgan", "seed"):
        torch.manual_seed(0)
        generator, discriminator, noise_shape = dcgan_models.build(arch, 100, img_size, 3)
        inputs = {"D": torch.randn(batch, 3, img_size, img_size, device=device, requires_grad=True),
                  "G": torch.randn(batch, *noise_shape, device=device, requires_grad=True)}
        for name, model in (("D", discriminator), ("G", generator)):
            row = []
            for variant in (model, fusedgan.convert(model), fusedgan.convert(model, memory_saving=True)):
                m = variant.to(device).train()
                row.append(peak_bytes(m, inputs[name]) if device.type == "cuda" else saved_bytes(m, inputs[name]))
            results.append((arch, name, *row))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    what = "peak memory of a forward" if device.type == "cuda" else "tensors saved for backward"
    print(f"activation memory ({what}), batch {args.batch}, {args.img_size}x{args.img_size}, fp32, {device}")
    print("| arch | model | stock MiB | fused MiB | saved | fused, memory_saving MiB | saved |")
    print("|---|---|---|---|---|---|---|")
    for arch, name, stock, fused, saving in measure(device, args.batch, args.img_size):
        print(f"| {arch} | {name} | {stock / 2**20:.1f} | {fused / 2**20:.1f} | {100 * (1 - fused / stock):.0f}% "
              f"| {saving / 2**20:.1f} | {100 * (1 - saving / stock):.0f}% |")


if __name__ == "__main__":
    main()
