"""Layers shared by the ProGAN and MSG-GAN plugins (Karras et al. 2018; Karnewar & Wang 2020).

Both papers use the same building blocks, so they live here once:
- Equalized learning rate comes from ``stylegan_layers``: weights are stored N(0, 1) and multiplied at run time by
  He's constant sqrt(2 / fan_in) (``act=True`` folds the sqrt(2) in) or 1 / sqrt(fan_in) for linear layers.
- Pixel norm after every G conv instead of batch norm: it normalises each pixel's feature vector, so G's signal
  cannot escalate during the G/D competition, and no sample depends on the others in its batch.
- Resampling is nearest-neighbour up and 2x2 average pooling down, as in the papers (not StyleGAN2's FIR filters),
  which is also what makes ProGAN's fade-in exact: alpha = 0 reproduces the previous stage bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .stylegan_layers import EqualConv2d, EqualLinear, minibatch_std


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each feature vector (dim 1, per sample and pixel) to unit root mean square."""
    return x * torch.rsqrt(x.square().mean(1, keepdim=True) + eps)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and not n & (n - 1)


def check_options(resolution, channels, latent_dim, channel_base, channel_max, mbstd_group) -> None:
    """Validation common to both plugins; every message starts with the option it is about."""
    if not is_pow2(resolution) or resolution < 8:
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    for name, value in (("latent_dim", latent_dim), ("channel_base", channel_base),
                        ("channel_max", channel_max), ("mbstd_group", mbstd_group)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if channel_base // resolution <= 0:
        raise ValueError(f"channel_base ({channel_base}) must be >= resolution ({resolution}): "
                         "the top layers would have no channels")


def widths(channel_base: int, channel_max: int):
    """Feature maps at resolution r: halve with every doubling of r, capped at ``channel_max``."""
    return lambda r: min(channel_base // r, channel_max)


class GInput(nn.Module):
    """The 4x4 block: latent -> dense to 4x4 -> 3x3 conv, pixel norm on the latent and after each layer."""

    def __init__(self, latent_dim: int, ch: int):
        super().__init__()
        self.dense = EqualLinear(latent_dim, ch * 16, act=True)
        self.conv = EqualConv2d(ch, ch, 3)
        self.ch = ch

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(pixel_norm(z)).view(z.shape[0], self.ch, 4, 4)
        return pixel_norm(self.conv(pixel_norm(x)))


class GBlock(nn.Module):
    """Nearest 2x upsampling, then two 3x3 convs (leaky ReLU 0.2, pixel norm)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, out_ch, 3)
        self.conv1 = EqualConv2d(out_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(self.conv0(upsample2x(x)))
        return pixel_norm(self.conv1(x))


def to_rgb(ch: int, channels: int) -> nn.Module:
    # Linear 1x1: the image is an unconstrained projection of the features (no tanh, as in ProGAN).
    return EqualConv2d(ch, channels, 1, act=False)


def from_rgb(channels: int, ch: int) -> nn.Module:
    return EqualConv2d(channels, ch, 1)  # 1x1 with leaky ReLU, as in ProGAN


class DBlock(nn.Module):
    """Two 3x3 convs (leaky ReLU 0.2), then 2x2 average pooling. ``in_ch`` may exceed ``mid_ch`` when the caller
    concatenates extra channels to the input (MSG-GAN's images)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, mid_ch, 3)
        self.conv1 = EqualConv2d(mid_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample2x(self.conv1(self.conv0(x)))


class DFinal(nn.Module):
    """4x4 head: minibatch stddev channel, 3x3 conv, 4x4 'valid' conv (a dense layer on the flattened 4x4 map,
    same arithmetic), dense to one logit. Returns logits ``[B]``."""

    def __init__(self, in_ch: int, ch: int, mbstd_group: int):
        super().__init__()
        self.conv = EqualConv2d(in_ch + 1, ch, 3)
        self.fc = EqualLinear(ch * 16, ch, act=True)
        self.out = EqualLinear(ch, 1)
        self.mbstd_group = mbstd_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(minibatch_std(x, self.mbstd_group))
        return self.out(self.fc(x.flatten(1))).flatten()
