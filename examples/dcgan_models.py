"""The two GANs of the example, written with stock layers (fusedgan.convert fuses them).

- "seed": the GAN of the article this project grew from (a study of ReLU in GANs): a
  generator that maps the noise through a Linear layer to 256 channels at 1/8 of the image
  size, then three stride-2 4x4 transposed convolutions (BatchNorm + ReLU after the first
  two, Tanh last); a discriminator of three stride-2 4x4 convolutions, each followed by
  LeakyReLU(0.2) (with BatchNorm in between for the last two), and a linear head. The
  article's generator started at 1/4 of the image size and so made images twice too large
  for its discriminator; here it starts at 1/8.
- "dcgan": the classic DCGAN (Radford et al.) as in the PyTorch examples, for 32x32 and
  64x64, with the discriminator's final Sigmoid left out (the loss takes logits).
"""

import torch
import torch.nn.functional as F
from torch import nn


class SeedGenerator(nn.Module):
    def __init__(self, latent_dim, img_size, channels):
        super().__init__()
        if img_size % 8:
            raise ValueError(f"the seed architecture needs an image size divisible by 8, got {img_size}")
        self.latent_dim = latent_dim
        self.img_size = img_size
        self.channels = channels
        # Size fix: the seed starts from img_size // 4 and its three stride-2 transposed
        # convolutions multiply by 8, so G made 2 * img_size images that D cannot take.
        # Starting from img_size // 8 makes G's output exactly img_size, D's input.
        self.init_size = img_size // 8
        self.fc = nn.Linear(latent_dim, 256 * self.init_size * self.init_size)
        self.conv_blocks = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 4, 2, 1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.ConvTranspose2d(64, channels, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z):
        out = self.fc(z.flatten(1))
        out = out.view(out.shape[0], 256, self.init_size, self.init_size)
        return self.conv_blocks(out)


class SeedDiscriminator(nn.Module):
    def __init__(self, img_size, channels):
        super().__init__()
        self.conv_blocks = nn.Sequential(
            nn.Conv2d(channels, 64, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            nn.Conv2d(128, 256, 4, 2, 1),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2),
        )
        self.fc = nn.Linear(256 * (img_size // 8) * (img_size // 8), 1)

    def forward(self, img):
        return self.fc(self.conv_blocks(img).flatten(1))


def dcgan_generator(nz, ngf, channels, img_size):
    if img_size not in (32, 64):
        raise ValueError(f"the classic DCGAN is built for 32x32 or 64x64 images, got {img_size}")
    widths = [ngf * 8, ngf * 4, ngf * 2, ngf] if img_size == 64 else [ngf * 4, ngf * 2, ngf]
    layers = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
    for cin, cout in zip(widths, widths[1:]):
        layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def dcgan_discriminator(ndf, channels, img_size):
    if img_size not in (32, 64):
        raise ValueError(f"the classic DCGAN is built for 32x32 or 64x64 images, got {img_size}")
    widths = [ndf, ndf * 2, ndf * 4, ndf * 8] if img_size == 64 else [ndf, ndf * 2, ndf * 4]
    layers = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for cin, cout in zip(widths, widths[1:]):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
    layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Flatten()]
    return nn.Sequential(*layers)


def dcgan_init(module):
    """N(0, 0.02) for convolutions, N(1, 0.02) and zero bias for BatchNorm (Radford et al.)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build(arch, latent_dim, img_size, channels):
    """(generator, discriminator, noise shape per sample) with stock layers."""
    if arch == "seed":
        generator, discriminator = SeedGenerator(latent_dim, img_size, channels), SeedDiscriminator(img_size, channels)
        noise_shape = (latent_dim,)
    else:
        generator = dcgan_generator(latent_dim, 64, channels, img_size)
        discriminator = dcgan_discriminator(64, channels, img_size)
        noise_shape = (latent_dim, 1, 1)
    generator.apply(dcgan_init)
    discriminator.apply(dcgan_init)
    return generator, discriminator, noise_shape


def gan_step(G, D, opt_g, opt_d, real, noise, scaler=None, amp_dtype=None, set_to_none=True):
    """One step of the PyTorch DCGAN recipe: a D update on real and detached fake images, then
    a G update, BCE with logits (in real's dtype, also under autocast). Returns the two
    losses as tensors: nothing is read back to the host, so a CUDA graph can capture the step
    (pass set_to_none=False there, and capturable optimizers). The example, its tests and the
    DCGAN benchmark all train with this step."""
    ones = torch.ones(real.shape[0], 1, device=real.device, dtype=real.dtype)
    autocast = dict(device_type=real.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    scale = scaler.scale if scaler is not None else (lambda loss: loss)
    with torch.autocast(**autocast):
        fake = G(noise)
        loss_d = F.binary_cross_entropy_with_logits(D(real).to(real.dtype), ones) + \
            F.binary_cross_entropy_with_logits(D(fake.detach()).to(real.dtype), torch.zeros_like(ones))
    opt_d.zero_grad(set_to_none=set_to_none)
    scale(loss_d).backward()
    scaler.step(opt_d) if scaler is not None else opt_d.step()
    with torch.autocast(**autocast):
        loss_g = F.binary_cross_entropy_with_logits(D(fake).to(real.dtype), ones)
    opt_g.zero_grad(set_to_none=set_to_none)
    scale(loss_g).backward()
    scaler.step(opt_g) if scaler is not None else opt_g.step()
    if scaler is not None:
        scaler.update()
    return loss_d.detach(), loss_g.detach()
