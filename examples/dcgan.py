"""Train a DCGAN, stock or fused, on data that needs no download.

    python examples/dcgan.py                          # digits, classic DCGAN 32x32, fused, CPU
    python examples/dcgan.py --arch seed --impl stock --epochs 5
    python examples/dcgan.py --compare 5              # stock vs fused from one seed, K steps, float64
    torchrun --nproc_per_node=2 examples/dcgan.py     # DDP, BatchNorm statistics synced over ranks

Data: by default the 8x8 handwritten digits scikit-learn ships (load_digits), resized to
the image size and scaled to [-1, 1]; or --data folder:PATH (a folder of images),
--data npz:PATH (an array of images), --data fake (random tensors, for speed runs).

Writes to --out: samples_epochNNN.png (a grid from fixed noise, every epoch),
loss_curve.png, log.json (losses every step, metrics every epoch) and checkpoint.pt
(--resume continues from it). With digits, a small classifier trained once on the same
data (cached) scores the samples every epoch: the mean confidence of its predictions and
how many of the 10 digits appear.

Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel (NCCL on GPUs,
gloo on CPUs): each rank takes its share of every batch (--batch-size is the global
batch), and the fused BatchNorms synchronize their statistics across ranks
(fusedgan.convert(..., sync_batchnorm=True)), so every BatchNorm normalises over the
global batch, as in one process. Stock layers use nn.SyncBatchNorm on GPUs; it has no CPU
implementation, so stock on CPUs keeps per-rank statistics (a notice says so). Rank 0
writes the pictures, the log and the checkpoint.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dcgan_models  # noqa: E402

import fusedgan  # noqa: E402

# --compare trains stock and fused from one seed in float64, where the kernels differ from
# stock only by rounding (~1e-16 relative): over a few steps the losses, the first step's
# gradients and the parameters then agree to this, relative to their size. Parameters
# whose true gradient is zero by construction (a bias in front of a BatchNorm) are the
# exception: Adam moves them by about lr per step in a direction rounding noise picks,
# whatever the implementation, so they are reported apart (they do not change the output).
COMPARE_TOLERANCE = 1e-8


class DataError(Exception):
    """A --data argument that cannot be read: reported as a message, not a traceback."""


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _to_images(array, img_size):
    """(N, H, W[, C]) or (N, C, H, W) numbers -> float (N, C, img_size, img_size) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(array))
    if x.dim() == 3:
        x = x[:, None]
    elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4:
        raise DataError(f"expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {tuple(x.shape)}")
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    x = x.float() / scale
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
    return (x.clamp(0, 1) * 2 - 1).contiguous()


def load_data(spec, img_size, seed):
    """(images tensor, labels or None) for --data."""
    if spec == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return _to_images(digits.images / 16.0, img_size), torch.as_tensor(digits.target)
    if spec == "fake":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(1024, 3, img_size, img_size, generator=generator) * 2 - 1, None
    kind, _, path = spec.partition(":")
    if kind not in ("folder", "npz") or not path:
        raise DataError(f"--data must be digits, fake, folder:PATH or npz:PATH, got {spec!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {spec}: {path} does not exist")
    if kind == "npz":
        try:
            with np.load(path) as archive:
                return _to_images(archive[archive.files[0]], img_size), None
        except (OSError, ValueError, IndexError) as error:
            raise DataError(f"--data {spec}: cannot read {path} as .npz ({error})") from None
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif"))
    if not files:
        raise DataError(f"--data {spec}: no .png/.jpg/.jpeg/.bmp/.gif images in {path}")
    try:
        images = [np.asarray(Image.open(p).convert("RGB").resize((img_size, img_size))) for p in files]
    except OSError as error:
        raise DataError(f"--data {spec}: cannot read an image ({error})") from None
    return _to_images(np.stack(images), img_size), None


# ---------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------


def save_grid(images, path, columns=8, scale=2):
    """Images in [-1, 1] (N, C, H, W) as one PNG grid."""
    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.full((c, rows * (h + 2) + 2, columns * (w + 2) + 2), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = images[i]
    array = grid.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if c == 1 else array)
    picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(path)


def save_loss_curve(losses, path, size=(720, 360)):
    """Discriminator and generator losses per step, as a PNG line chart."""
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = 50, 20, size[0] - 10, size[1] - 30
    draw.rectangle((left, top, right, bottom), outline="black")
    series = {"D": [e["loss_d"] for e in losses], "G": [e["loss_g"] for e in losses]}
    values = [v for s in series.values() for v in s if math.isfinite(v)]
    if values:
        low, high = min(values), max(values)
        high = high if high > low else low + 1
        for name, fill in (("D", (31, 119, 180)), ("G", (255, 127, 14))):
            points = [(left + (right - left) * i / max(len(series[name]) - 1, 1),
                       bottom - (bottom - top) * (v - low) / (high - low)) for i, v in enumerate(series[name])]
            if len(points) > 1:
                draw.line(points, fill=fill, width=1)
            draw.text((right - 60, top + (10 if name == "D" else 24)), f"loss {name}", fill=fill)
        draw.text((4, top), f"{high:.2f}", fill="black")
        draw.text((4, bottom - 10), f"{low:.2f}", fill="black")
    draw.text((left, bottom + 8), f"step 0 .. {len(losses)}", fill="black")
    picture.save(path)


# ---------------------------------------------------------------------------------------
# The digit classifier behind the quality measure
# ---------------------------------------------------------------------------------------


def digit_classifier(images, labels, img_size, device):
    """A small CNN trained once on the bundled digits and cached (FUSEDGAN_CACHE_DIR)."""
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 10))
    cache = Path(os.environ.get("FUSEDGAN_CACHE_DIR", Path.home() / ".cache" / "fusedgan"))
    path = cache / f"digit_classifier_{img_size}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu"))
    else:
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        for _ in range(8):
            for batch in torch.randperm(len(images), generator=generator).split(64):
                optimizer.zero_grad()
                F.cross_entropy(model(images[batch]), labels[batch]).backward()
                optimizer.step()
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval().to(device)


@torch.no_grad()
def sample_quality(classifier, samples):
    """(classifier score: mean top-class probability, class coverage: digits seen / 10)."""
    probabilities = classifier(samples.float()).softmax(1)
    confidence, predicted = probabilities.max(1)
    return confidence.mean().item(), len(predicted.unique()) / 10


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def _distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def make_models(args, channels, device, impl):
    """(G and D to call, the noise shape, the bare G and D: what is saved and optimised)."""
    torch.manual_seed(args.seed)
    generator, discriminator, noise_shape = dcgan_models.build(args.arch, args.latent_dim, args.img_size, channels)
    sync = _distributed()
    if impl == "fused":
        generator = fusedgan.convert(generator, backend=args.backend, sync_batchnorm=sync)
        discriminator = fusedgan.convert(discriminator, backend=args.backend, sync_batchnorm=sync)
    elif sync and device.type == "cuda":
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
    elif sync and dist.get_rank() == 0:
        print("notice: stock nn.SyncBatchNorm runs only on GPUs; the stock layers keep per-rank statistics")
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    generator = generator.to(device, memory_format=memory_format)
    discriminator = discriminator.to(device, memory_format=memory_format)
    run_g, run_d = generator, discriminator
    if sync:
        ids = [device.index] if device.type == "cuda" else None
        run_g = nn.parallel.DistributedDataParallel(generator, device_ids=ids)
        run_d = nn.parallel.DistributedDataParallel(discriminator, device_ids=ids)
    if impl == "compile":
        run_g, run_d = torch.compile(run_g), torch.compile(run_d)
    return run_g, run_d, noise_shape, generator, discriminator


class Trainer:
    """One GAN training run: the PyTorch DCGAN example's recipe (Adam 2e-4, betas (0.5,
    0.999), BCE with logits, one D step then one G step per batch)."""

    def __init__(self, args, data, channels, device, impl, dtype=torch.float32):
        self.args, self.data, self.device, self.dtype = args, data.to(dtype), device, dtype
        self.G, self.D, self.noise_shape, self.G_raw, self.D_raw = make_models(args, channels, device, impl)
        self.G_raw.to(dtype), self.D_raw.to(dtype)
        self.opt_g = torch.optim.Adam(self.G_raw.parameters(), 2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D_raw.parameters(), 2e-4, betas=(0.5, 0.999))
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        self.order = torch.Generator().manual_seed(args.seed)  # the same batches on every rank
        self.noise = torch.Generator(device=device).manual_seed(args.seed + 1 + self.rank)

    def batches(self):
        """This rank's share of each global batch."""
        for index in torch.randperm(len(self.data), generator=self.order).split(self.args.batch_size):
            if len(index) >= 2 * self.world:  # BatchNorm needs two samples (on every rank)
                yield self.data[index[self.rank::self.world]].to(self.device)

    def sample_noise(self, n):
        return torch.randn((n, *self.noise_shape), generator=self.noise, device=self.device).to(self.dtype)

    def step(self, real):
        if self.args.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        loss_d, loss_g = dcgan_models.gan_step(self.G, self.D, self.opt_g, self.opt_d, real,
                                               self.sample_noise(real.shape[0]), self.scaler, self.amp_dtype)
        return loss_d.item(), loss_g.item()

    def state(self, epoch, log):
        return {"epoch": epoch, "G": self.G_raw.state_dict(), "D": self.D_raw.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "log": log,
                "order": self.order.get_state(), "noise": self.noise.get_state()}

    def load(self, state):
        self.G_raw.load_state_dict(state["G"])
        self.D_raw.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.order.set_state(state["order"])
        self.noise.set_state(state["noise"])


def _relative(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def compare(args, data, channels, device):
    """Train stock and fused from one seed for K steps in float64; compare the losses, the
    first step's gradients and the parameters, each relative to its size."""
    runs = {}
    for impl in ("stock", "fused"):
        trainer = Trainer(args, data, channels, device, impl, dtype=torch.float64)
        models = (trainer.G_raw, trainer.D_raw)
        losses, first_grads = [], None
        for real in trainer.batches():
            if len(losses) == args.compare:
                break
            losses.append(trainer.step(real))
            if first_grads is None:  # G's step also backpropagates through D: both models' gradients
                first_grads = {f"{'GD'[i]}.{n}": p.grad.detach().clone() for i, m in enumerate(models)
                               for n, p in m.named_parameters()}
        params = {f"{'GD'[i]}.{n}": p.detach().clone() for i, m in enumerate(models) for n, p in m.named_parameters()}
        runs[impl] = (torch.tensor(losses, dtype=torch.float64), first_grads, params)
    (stock_losses, stock_grads, stock_params), (fused_losses, fused_grads, fused_params) = runs["stock"], runs["fused"]
    # Zero by construction: a first-step gradient at rounding level against all the gradients.
    scale = torch.cat([g.flatten() for g in stock_grads.values()]).norm()
    zero = [n for n, g in stock_grads.items() if g.norm() <= 1e-12 * scale]
    kept = [n for n in stock_grads if n not in zero]
    loss_err = _relative(fused_losses, stock_losses)
    grad_err = max(_relative(fused_grads[n], stock_grads[n]) for n in kept)
    param_err = max(_relative(fused_params[n], stock_params[n]) for n in kept)
    print(f"compare over {args.compare} steps ({args.arch}, {device}, float64), largest relative differences: "
          f"losses {loss_err:.2e}, first-step gradients {grad_err:.2e}, parameters {param_err:.2e} "
          f"(tolerance {COMPARE_TOLERANCE:g}; {len(kept)} parameters)")
    if zero:
        noise = max(max(fused_grads[n].abs().max().item(), stock_grads[n].abs().max().item()) for n in zero)
        print(f"zero gradient by construction (compared apart: Adam moves them by ~lr in a direction rounding "
              f"noise picks): {', '.join(zero)}; their first-step gradients are at most {noise:.1e} "
              f"(all gradients: norm {scale:.1e})")
    ok = max(loss_err, grad_err, param_err) <= COMPARE_TOLERANCE
    print("within tolerance" if ok else "OUTSIDE tolerance")
    return 0 if ok else 1


def end_of_epoch(trainer, classifier, fixed_noise, epoch, log, out):
    """Samples from the fixed noise, the classifier's score, a log line and the checkpoint."""
    trainer.G_raw.eval()
    with torch.no_grad(), torch.autocast(trainer.device.type, dtype=trainer.amp_dtype,
                                         enabled=trainer.amp_dtype is not None):
        samples = trainer.G_raw(fixed_noise).float()
    trainer.G_raw.train()
    save_grid(samples, out / f"samples_epoch{epoch + 1:03d}.png")
    entry = {"epoch": epoch + 1, "loss_d": log["steps"][-1]["loss_d"], "loss_g": log["steps"][-1]["loss_g"]}
    if classifier is not None:
        entry["classifier_score"], entry["class_coverage"] = sample_quality(classifier, samples)
    log["epochs"].append(entry)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()), flush=True)
    state = trainer.state(epoch, log)
    state["fixed_noise"] = fixed_noise
    torch.save(state, out / "checkpoint.pt")


def train(args, data, labels, channels, device):
    out = Path(args.out)
    trainer = Trainer(args, data, channels, device, args.impl)
    writer = trainer.rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    fixed_noise = trainer.sample_noise(64)
    classifier = digit_classifier(data, labels, args.img_size, device) if labels is not None and writer else None
    log, start = {"args": vars(args), "steps": [], "epochs": []}, 0
    checkpoint = out / "checkpoint.pt"
    if args.resume:
        if not checkpoint.exists():
            raise DataError(f"--resume: no checkpoint at {checkpoint}")
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        trainer.load(state)
        log, start = state["log"], state["epoch"] + 1
        fixed_noise = trainer.sample_noise(64) if "fixed_noise" not in state else state["fixed_noise"].to(device)
    images, started, steps = 0, time.perf_counter(), 0
    try:
        from tqdm import tqdm
    except ImportError:
        def tqdm(iterable, **_):
            return iterable
    for epoch in range(start, args.epochs):
        bar = tqdm(trainer.batches(), total=math.ceil(len(data) / args.batch_size), desc=f"epoch {epoch + 1}",
                   leave=False, disable=not sys.stderr.isatty())
        for real in bar:
            loss_d, loss_g = trainer.step(real)
            log["steps"].append({"epoch": epoch, "loss_d": loss_d, "loss_g": loss_g})
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss_d=f"{loss_d:.3f}", loss_g=f"{loss_g:.3f}")
            images += real.shape[0] * trainer.world
            steps += 1
            if args.max_steps and steps >= args.max_steps:
                break
        if writer:
            end_of_epoch(trainer, classifier, fixed_noise, epoch, log, out)
        if args.max_steps and steps >= args.max_steps:
            break
    elapsed = time.perf_counter() - started
    if not writer:
        return 0
    save_loss_curve(log["steps"], out / "loss_curve.png")
    (out / "log.json").write_text(json.dumps(log, indent=1))
    rate = images / elapsed if elapsed > 0 else float("nan")
    memory = ""
    if device.type == "cuda":
        memory = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    ranks = f" x {trainer.world} processes" if trainer.world > 1 else ""
    print(f"done: {args.impl} {args.arch} on {device}{ranks}, {images} images in {elapsed:.1f} s "
          f"({rate:.1f} images/s{memory}); wrote {out}/samples_epoch*.png, loss_curve.png, log.json, checkpoint.pt")
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["dcgan", "seed"], default="dcgan")
    parser.add_argument("--impl", choices=["stock", "fused", "compile"], default="fused")
    parser.add_argument("--backend", default="auto", choices=["auto", "triton", "cuda", "cpu", "torch"])
    parser.add_argument("--data", default="digits", help="digits | fake | folder:PATH | npz:PATH")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", default="runs/dcgan")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--compare", type=int, default=0, metavar="K",
                        help="compare stock and fused over K steps in float64")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke runs)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if under_torchrun:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        data, labels = load_data(args.data, args.img_size, args.seed)
        channels = data.shape[1]
        if args.compare:
            return compare(args, data, channels, device)
        return train(args, data, labels, channels, device)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if under_torchrun:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
