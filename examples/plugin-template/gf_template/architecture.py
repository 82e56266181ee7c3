"""``template_conv``: a small convolutional GAN for square images (upsample + conv G, strided-conv D)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ganforge.api import Architecture
from ganforge.registry import register


class PixelNorm(nn.Module):
    """Scales each pixel's feature vector to unit RMS (ProGAN): keeps G's activations from drifting without the
    batch statistics of batch norm, so every image depends on its own latent only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Generator(nn.Module):
    """z -> a 4x4 feature map -> (nearest upsample, 3x3 conv) per doubling -> image in [-1, 1] (tanh)."""

    def __init__(self, latent_dim: int, resolution: int, channels: int, width: int):
        super().__init__()
        n_up = int(math.log2(resolution)) - 2
        ch = width * 2**n_up  # channels halve at every doubling and end at `width`
        self.start = nn.Sequential(nn.Linear(latent_dim, ch * 16), nn.LeakyReLU(0.2))
        self.norm = PixelNorm()
        layers = []
        for _ in range(n_up):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch // 2, 3, padding=1), nn.LeakyReLU(0.2),
                       PixelNorm()]
            ch //= 2
        layers += [nn.Conv2d(ch, channels, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.start(z)
        return self.body(self.norm(x.view(z.shape[0], -1, 4, 4)))


class Discriminator(nn.Module):
    """image -> strided 4x4 convs down to 4x4 -> one logit per image ``[B]``. No batch norm: each image's logit
    depends on that image only, which keeps losses and penalties simple."""

    def __init__(self, resolution: int, channels: int, width: int):
        super().__init__()
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(int(math.log2(resolution)) - 2):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch *= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).flatten()


@register("architecture", "template_conv")
class TemplateConv(Architecture):
    """Small conv GAN (template): G upsamples a 4x4 map with 3x3 convs and pixel norm to a tanh image; D is
    strided convs and a linear head. No batch statistics anywhere."""

    api_version = 1  # the ganforge plugin API this was written for; another major version is refused on use
    contract_options = {"resolution": 8, "latent_dim": 8, "width": 4}  # what ganforge.testing builds: tiny

    # Typed keyword options are what a recipe's `model:` block may set; ganforge validates names and types.
    def __init__(self, resolution: int = 32, channels: int = 3, latent_dim: int = 64, width: int = 16):
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if latent_dim < 1 or width < 1:
            raise ValueError(f"latent_dim and width must be >= 1, got {latent_dim} and {width}")
        self.resolution, self.channels, self.latent_dim, self.width = resolution, channels, latent_dim, width

    def build_generator(self) -> nn.Module:
        return Generator(self.latent_dim, self.resolution, self.channels, self.width)

    def build_discriminator(self) -> nn.Module:
        return Discriminator(self.resolution, self.channels, self.width)

    def sample_latents(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        # The engine passes `generator` for the fixed sample-grid latents and `device` for training batches.
        return torch.randn(n, self.latent_dim, generator=generator, device=device)
