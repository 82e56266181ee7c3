"""DCGAN (Radford et al., 2015): transposed-conv G with batch norm and ReLU, strided-conv D with leaky ReLU."""

from __future__ import annotations

import math

from torch import nn

from ganforge.api import Architecture
from ganforge.registry import register


def _init_weights(m: nn.Module) -> None:
    # The paper's init: N(0, 0.02) for convs, N(1, 0.02) for batch-norm scales.
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channels: int, width: int):
        super().__init__()
        n_up = int(math.log2(resolution)) - 2  # 4x4 -> resolution
        ch = width * 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(latent_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        self.apply(_init_weights)

    def forward(self, z):
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, width: int, batch_norm: bool, spectral_norm: bool = False):
        super().__init__()
        n_down = int(math.log2(resolution)) - 2
        layers = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]  # no BN on the input layer
        ch = width
        for _ in range(n_down - 1):
            layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0))  # 4x4 -> 1x1 logit
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)
        if spectral_norm:  # Miyato et al. 2018: every conv's weight divided by its largest singular value
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x):
        return self.net(x).flatten()


@register("architecture", "dcgan")
class DCGAN(Architecture):
    """DCGAN: transposed-conv G (batch norm, ReLU, tanh), strided-conv D (leaky ReLU, optional batch norm)."""

    def __init__(self, resolution: int = 32, channels: int = 3, latent_dim: int = 100, g_width: int = 64,
                 d_width: int = 64, d_batch_norm: bool = True, d_spectral_norm: bool = False):
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if min(latent_dim, g_width, d_width) <= 0:
            raise ValueError("latent_dim, g_width and d_width must be > 0")
        self.resolution, self.channels, self.latent_dim = resolution, channels, latent_dim
        self.g_width, self.d_width, self.d_batch_norm = g_width, d_width, d_batch_norm
        self.d_spectral_norm = d_spectral_norm

    def build_generator(self) -> nn.Module:
        return DCGANGenerator(self.latent_dim, self.resolution, self.channels, self.g_width)

    def build_discriminator(self) -> nn.Module:
        return DCGANDiscriminator(self.resolution, self.channels, self.d_width, self.d_batch_norm, self.d_spectral_norm)
