"""Progressive growing of GANs (ProGAN, Karras et al. 2018).

Both networks are built once, at the final resolution, with every block present; ``set_stage(resolution, alpha)``
picks how much of them runs. That keeps the parameter set (and so the optimizers, EMA copy, DDP buckets and
checkpoints) fixed for the whole run, at the price of parameters that sit idle until their stage starts.

Stage semantics (the engine relies on these):
- G at stage r returns ``[B, C, r, r]``; D takes ``[B, C, r, r]`` and returns logits ``[B]``.
- While fading in (alpha < 1, r > start_resolution) G's image is ``lerp(up(toRGB_prev(h_prev)), toRGB_r(h_r),
  alpha)`` and D's input to the next block is ``lerp(fromRGB_prev(avgpool(x)), block_r(fromRGB_r(x)), alpha)``;
  ``prepare_real`` blends the reals the same way, so reals and fakes carry the same mix of detail.
- Blocks above the stage never run, so their parameters keep ``grad is None`` (and an empty Adam state); at
  alpha = 1 the previous stage's toRGB / fromRGB are not run either.
- ``set_stage`` only sets plain attributes: call it on G, D and G's EMA copy (the unwrapped modules, not a DDP
  wrapper). Default stage: the final resolution, alpha 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ganforge.api import Architecture
from ganforge.registry import register

from .progan_layers import (
    DBlock,
    DFinal,
    GBlock,
    GInput,
    check_options,
    downsample2x,
    from_rgb,
    is_pow2,
    to_rgb,
    upsample2x,
    widths,
)


class _Staged:
    """Stage bookkeeping shared by G and D (plain attributes only: no parameters, no RNG)."""

    stages: list[int]
    stage: int
    alpha: float

    def set_stage(self, resolution: int, alpha: float) -> None:
        if resolution not in self.stages:
            raise ValueError(f"resolution {resolution!r} is not a stage (stages: {self.stages})")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.stage, self.alpha = int(resolution), float(alpha)

    @property
    def fading(self) -> bool:
        return self.alpha < 1.0 and self.stage > self.stages[0]


class ProGANGenerator(_Staged, nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channels: int, ch, stages: list[int]):
        super().__init__()
        self.input = GInput(latent_dim, ch(4))
        self.blocks = nn.ModuleDict()
        r = 8
        while r <= resolution:
            self.blocks[str(r)] = GBlock(ch(r // 2), ch(r))
            r *= 2
        # toRGB only where a stage can end: below start_resolution it would never run (and never train).
        self.to_rgb = nn.ModuleDict({str(r): to_rgb(ch(r), channels) for r in stages})
        self.stages = list(stages)
        self.set_stage(resolution, 1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, prev, r = self.input(z), None, 4
        while r < self.stage:
            r *= 2
            prev, h = h, self.blocks[str(r)](h)
        img = self.to_rgb[str(r)](h)
        if self.fading:  # torch.lerp at weight 0 returns its start exactly: alpha = 0 is the previous stage
            img = torch.lerp(upsample2x(self.to_rgb[str(r // 2)](prev)), img, self.alpha)
        return img


class ProGANDiscriminator(_Staged, nn.Module):
    def __init__(self, resolution: int, channels: int, ch, stages: list[int], mbstd_group: int):
        super().__init__()
        self.from_rgb = nn.ModuleDict({str(r): from_rgb(channels, ch(r)) for r in stages})
        self.blocks = nn.ModuleDict()
        r = resolution
        while r > 4:
            self.blocks[str(r)] = DBlock(ch(r), ch(r), ch(r // 2))
            r //= 2
        self.final = DFinal(ch(4), ch(4), mbstd_group)
        self.stages = list(stages)
        self.set_stage(resolution, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.stage
        if x.shape[-1] != r or x.shape[-2] != r:
            raise ValueError(f"D is at stage {r} and expects [B, C, {r}, {r}] images, got {list(x.shape)}")
        h = self.from_rgb[str(r)](x)
        if r > 4:
            h = self.blocks[str(r)](h)
        if self.fading:
            h = torch.lerp(self.from_rgb[str(r // 2)](downsample2x(x)), h, self.alpha)
        r //= 2
        while r > 4:
            h = self.blocks[str(r)](h)
            r //= 2
        return self.final(h)


@register("architecture", "progan")
class ProGAN(Architecture):
    """ProGAN: progressive growing with fade-in, pixel norm, equalized lr, minibatch stddev (Karras et al. 2018).

    The engine grows it through ``stage_resolutions()``, ``G.set_stage`` / ``D.set_stage`` and ``prepare_real``.
    Channels at resolution r: min(channel_base // r, channel_max). G's output is linear (no tanh).
    """

    # One stage only (start == final), so the contract check's "every parameter gets a gradient" holds: with
    # more stages the lower toRGB/fromRGB layers are idle at the default (final, alpha 1) stage by design.
    contract_options = {"resolution": 8, "start_resolution": 8, "latent_dim": 16, "channel_base": 64,
                        "channel_max": 8}

    def __init__(self, resolution: int = 32, channels: int = 3, latent_dim: int = 128, channel_base: int = 2048,
                 channel_max: int = 128, start_resolution: int = 4, mbstd_group: int = 4):
        check_options(resolution, channels, latent_dim, channel_base, channel_max, mbstd_group)
        if not is_pow2(start_resolution) or start_resolution < 4:
            raise ValueError(f"start_resolution must be a power of two >= 4, got {start_resolution!r}")
        if start_resolution > resolution:
            raise ValueError(f"start_resolution ({start_resolution}) must be <= resolution ({resolution})")
        self.resolution, self.channels, self.latent_dim = resolution, channels, latent_dim
        self.channel_base, self.channel_max = channel_base, channel_max
        self.start_resolution, self.mbstd_group = start_resolution, mbstd_group

    def stage_resolutions(self) -> list[int]:
        out, r = [], self.start_resolution
        while r <= self.resolution:
            out.append(r)
            r *= 2
        return out

    def build_generator(self) -> nn.Module:
        return ProGANGenerator(self.latent_dim, self.resolution, self.channels,
                               widths(self.channel_base, self.channel_max), self.stage_resolutions())

    def build_discriminator(self) -> nn.Module:
        return ProGANDiscriminator(self.resolution, self.channels, widths(self.channel_base, self.channel_max),
                                   self.stage_resolutions(), self.mbstd_group)

    def prepare_real(self, images: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
        """Reals decoded at the stage resolution -> what D sees: during a fade, the same blend of the coarse
        (pooled then upsampled) image and the full-detail one that G's output has."""
        if resolution not in self.stage_resolutions():
            raise ValueError(f"resolution {resolution!r} is not a stage (stages: {self.stage_resolutions()})")
        if images.shape[-1] != resolution or images.shape[-2] != resolution:
            raise ValueError(f"expected [B, C, {resolution}, {resolution}] reals, got {list(images.shape)}")
        if alpha < 1.0 and resolution > self.start_resolution:
            return torch.lerp(upsample2x(downsample2x(images)), images, float(alpha))
        return images
