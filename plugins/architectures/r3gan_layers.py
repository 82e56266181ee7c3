"""Building blocks of the R3GAN architecture (Huang et al., 2024): normalisation-free inverted-bottleneck residual
blocks with grouped convolutions, fix-up initialisation, low-pass resampling and learned 4x4 bases."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2 / (1 + 0.2 ** 2))  # keeps unit variance through a leaky ReLU of slope 0.2


class Conv(nn.Module):
    """A bias-free convolution initialised N(0, gain^2 / fan_in). The weight is cast to the input's dtype, so a
    stage run in bf16 computes in bf16 while the parameter (and Adam's state) stays fp32."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, gain: float = 1.0, padding=None):
        super().__init__()
        fan_in = cin // groups * kernel * kernel
        self.weight = nn.Parameter(torch.randn(cout, cin // groups, kernel, kernel) * (gain / math.sqrt(fan_in)))
        self.groups, self.padding = groups, (kernel - 1) // 2 if padding is None else padding

    def forward(self, x):
        return F.conv2d(x, self.weight.to(x.dtype), padding=self.padding, groups=self.groups)


class BiasAct(nn.Module):
    """Per-channel bias then leaky ReLU (0.2): the only non-linearity; there is no normalisation anywhere."""

    def __init__(self, ch: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(ch))

    def forward(self, x):
        return F.leaky_relu(x + self.bias.to(x.dtype).view(1, -1, 1, 1), 0.2)


class Block(nn.Module):
    """x + project(act(grouped kxk(act(expand(x))))): 1x1 to ``ch * expansion``, a grouped conv with
    ``group_channels`` channels per group, 1x1 back. Fix-up: the last conv starts at zero (every block is the
    identity at init) and the others are scaled by total_blocks^(-1/4) (3 layers per branch: L^(-1/(2*3-2))), so
    the variance of the residual stream does not grow with depth without any normalisation layer."""

    def __init__(self, ch: int, expansion: int, group_channels: int, total_blocks: int, kernel: int = 3):
        super().__init__()
        wide = ch * expansion
        if wide % group_channels:
            raise ValueError(f"width {ch} x expansion {expansion} = {wide} is not a multiple of group_channels "
                             f"{group_channels}")
        gain = LRELU_GAIN * total_blocks ** (-1 / 4)
        self.expand = Conv(ch, wide, 1, gain=gain)
        self.act1 = BiasAct(wide)
        self.spatial = Conv(wide, wide, kernel, groups=wide // group_channels, gain=gain)
        self.act2 = BiasAct(wide)
        self.project = Conv(wide, ch, 1, gain=0.0)

    def forward(self, x):
        return x + self.project(self.act2(self.spatial(self.act1(self.expand(x)))))


def _lowpass() -> torch.Tensor:
    """The separable [1, 3, 3, 1] / 8 filter ([1, 2, 1] convolved with the box [1, 1]) as a 4x4 kernel, sum 1."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return (k / k.sum())[None, None]


class Up(nn.Module):
    """1x1 conv to the new width (when it changes), then x2 upsampling by a low-pass filter (zero insertion +
    filter, gain 4 to keep the mean), depthwise: resampling never mixes channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = Conv(cin, cout, 1) if cin != cout else nn.Identity()
        self.register_buffer("kernel", _lowpass() * 4, persistent=False)

    def forward(self, x):
        x = self.linear(x)
        k = self.kernel.to(x.dtype).expand(x.shape[1], 1, 4, 4)
        return F.conv_transpose2d(x, k, stride=2, padding=1, groups=x.shape[1])


class Down(nn.Module):
    """x2 downsampling by the same low-pass filter (depthwise), then a 1x1 conv to the new width."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = Conv(cin, cout, 1) if cin != cout else nn.Identity()
        self.register_buffer("kernel", _lowpass(), persistent=False)

    def forward(self, x):
        k = self.kernel.to(x.dtype).expand(x.shape[1], 1, 4, 4)
        return self.linear(F.conv2d(x, k, stride=2, padding=1, groups=x.shape[1]))


class GenerativeBasis(nn.Module):
    """z -> [B, C, 4, 4]: a learned 4x4 pattern per channel, scaled by a linear map of z (no mapping network)."""

    def __init__(self, latent_dim: int, ch: int):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(ch, 4, 4))
        self.linear = nn.Parameter(torch.randn(ch, latent_dim) / math.sqrt(latent_dim))

    def forward(self, z):
        return self.basis[None] * F.linear(z, self.linear)[:, :, None, None]


class DiscriminativeBasis(nn.Module):
    """[B, C, 4, 4] -> [B]: a learned 4x4 pattern per channel (depthwise 4x4 conv), then a linear map to one logit."""

    def __init__(self, ch: int):
        super().__init__()
        self.basis = Conv(ch, ch, 4, groups=ch, padding=0)
        self.linear = nn.Parameter(torch.randn(1, ch) / math.sqrt(ch))

    def forward(self, x):
        return F.linear(self.basis(x).flatten(1).float(), self.linear).flatten()
