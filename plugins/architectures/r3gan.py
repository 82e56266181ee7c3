"""R3GAN (Huang et al., "The GAN is dead; long live the GAN!", NeurIPS 2024): a plain residual G and D without
normalisation, mapping network or tricks, meant for the rpgan loss with R1 + R2 (recipes/r3gan.yaml)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ganforge.api import Architecture
from ganforge.registry import register

from .r3gan_layers import Block, Conv, DiscriminativeBasis, Down, GenerativeBasis, Up


class Stage(nn.Module):
    """Layers of one resolution, run in ``dtype`` (bf16 for the highest stages when asked)."""

    def __init__(self, layers: list[nn.Module], dtype: torch.dtype):
        super().__init__()
        self.layers, self.dtype = nn.Sequential(*layers), dtype

    def forward(self, x):
        return self.layers(x.to(self.dtype))


class R3Generator(nn.Module):
    """z -> 4x4 basis -> [blocks, then x2 up] per stage -> 1x1 to the image channels (no output non-linearity)."""

    def __init__(self, latent_dim, widths, blocks, expansion, group_channels, channels, dtypes):
        super().__init__()
        total = blocks * len(widths)
        stages = []
        for i, (w, dtype) in enumerate(zip(widths, dtypes)):
            first = GenerativeBasis(latent_dim, w) if i == 0 else Up(widths[i - 1], w)
            stages.append(Stage([first] + [Block(w, expansion, group_channels, total) for _ in range(blocks)], dtype))
        self.stages = nn.Sequential(*stages)
        self.to_image = Conv(widths[-1], channels, 1)

    def forward(self, z):
        x = self.stages(z)
        return self.to_image(x).float()


class R3Discriminator(nn.Module):
    """image -> 1x1 to the first width -> [blocks, then x2 down] per stage -> 4x4 basis -> logit."""

    def __init__(self, widths, blocks, expansion, group_channels, channels, dtypes):
        super().__init__()
        total = blocks * len(widths)
        self.from_image = Conv(channels, widths[0], 1)
        stages = []
        for i, (w, dtype) in enumerate(zip(widths, dtypes)):
            last = DiscriminativeBasis(w) if i == len(widths) - 1 else Down(w, widths[i + 1])
            stages.append(Stage([Block(w, expansion, group_channels, total) for _ in range(blocks)] + [last], dtype))
        self.stages = nn.Sequential(*stages)

    def forward(self, x):
        return self.stages(self.from_image(x.to(self.stages[0].dtype)))


@register("architecture", "r3gan")
class R3GAN(Architecture):
    """R3GAN's G and D: per resolution from 4x4 up, ``blocks`` inverted-bottleneck residual blocks (1x1 to
    ``width x expansion``, grouped 3x3 with ``group_channels`` channels per group, 1x1 back; fix-up initialised),
    low-pass resampling between stages; D mirrors G. ``widths``: one per stage, coarse to fine (G's order; D uses
    them fine to coarse), default ``width`` everywhere. ``bf16_stages``: how many of the highest-resolution stages
    of G and D compute in bfloat16 (R3GAN's mixed precision; parameters stay fp32)."""

    def __init__(self, resolution: int = 32, channels: int = 3, latent_dim: int = 64, width: int = 64,
                 widths: list[int] | None = None, blocks: int = 2, expansion: int = 2, group_channels: int = 16,
                 bf16_stages: int = 0):
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        n = int(math.log2(resolution)) - 1  # stages 4x4 .. resolution
        widths = list(widths) if widths is not None else [width] * n
        if len(widths) != n:
            raise ValueError(f"widths needs {n} entries (one per resolution 4..{resolution}), got {len(widths)}")
        if min(latent_dim, blocks, expansion, group_channels, *widths) < 1:
            raise ValueError("latent_dim, width(s), blocks, expansion and group_channels must be >= 1")
        bad = [w for w in widths if w * expansion % group_channels]
        if bad:
            raise ValueError(f"width x expansion must be a multiple of group_channels ({group_channels}): "
                             f"widths {bad} x {expansion} are not")
        if not 0 <= bf16_stages <= n:
            raise ValueError(f"bf16_stages must be in 0..{n}, got {bf16_stages}")
        self.resolution, self.channels, self.latent_dim, self.widths = resolution, channels, latent_dim, widths
        self.blocks, self.expansion, self.group_channels = blocks, expansion, group_channels
        self.bf16_stages = bf16_stages

    def _dtypes(self) -> list[torch.dtype]:
        """Coarse to fine: the last ``bf16_stages`` in bfloat16."""
        n = len(self.widths)
        return [torch.bfloat16 if i >= n - self.bf16_stages else torch.float32 for i in range(n)]

    def build_generator(self) -> nn.Module:
        return R3Generator(self.latent_dim, self.widths, self.blocks, self.expansion, self.group_channels,
                           self.channels, self._dtypes())

    def build_discriminator(self) -> nn.Module:
        return R3Discriminator(self.widths[::-1], self.blocks, self.expansion, self.group_channels, self.channels,
                               self._dtypes()[::-1])
