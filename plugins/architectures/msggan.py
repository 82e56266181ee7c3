"""MSG-GAN: multi-scale gradients (Karnewar & Wang 2020).

Instead of growing, G emits an image at every resolution and D reads all of them, so D's gradient reaches every
G block directly from the first step (no fade-in schedule, no idle layers).

- G: the ProGAN generator at full resolution (pixel norm, equalized lr), with a linear 1x1 toRGB after every block;
  ``forward(z)`` returns a list of images coarse -> fine, ``[B, C, 4, 4], [B, C, 8, 8], ..., [B, C, R, R]``.
  Outputs are linear (no tanh), like ProGAN's and like the paper's MSG-ProGAN.
- D: fromRGB on the finest image, then ProGAN D blocks; before each lower-resolution block the image of that
  scale goes through its own 1x1 fromRGB and is concatenated to the features (the paper's "lin_cat" combine).
  The plain concat of 3 raw image channels next to 64+ feature channels ("simple") let D ignore the coarse
  scales on the digits: G's 4² and 8² outputs stayed coloured noise after 30 kimg while 32² was readable.
  Minibatch stddev in the 4x4 head; logits ``[B]``.
- Reals: ``prepare_real`` turns one decoded ``[B, C, R, R]`` batch into the matching pyramid by repeated 2x2
  average pooling, so D compares like with like at every scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.api import Architecture
from ganforge.registry import register

from .progan_layers import DBlock, DFinal, GBlock, GInput, check_options, downsample2x, from_rgb, to_rgb, widths


def scales(resolution: int) -> list[int]:
    out, r = [], 4
    while r <= resolution:
        out.append(r)
        r *= 2
    return out


class MSGGenerator(nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channels: int, ch):
        super().__init__()
        self.input = GInput(latent_dim, ch(4))
        self.blocks = nn.ModuleList(GBlock(ch(r // 2), ch(r)) for r in scales(resolution)[1:])
        self.to_rgb = nn.ModuleList(to_rgb(ch(r), channels) for r in scales(resolution))

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        h = self.input(z)
        out = [self.to_rgb[0](h)]
        for blk, rgb in zip(self.blocks, self.to_rgb[1:]):
            h = blk(h)
            out.append(rgb(h))
        return out


class MSGDiscriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, ch, mbstd_group: int):
        super().__init__()
        self.from_rgb = from_rgb(channels, ch(resolution))
        # Fine -> coarse. Every block but the first also takes its scale's image, through a 1x1 fromRGB of
        # half its width (lin_cat), so the coarse images weigh in D's decision as much as its features do.
        self.scale_rgb = nn.ModuleList(from_rgb(channels, ch(r) // 2) for r in reversed(scales(resolution)[:-1]))
        self.blocks = nn.ModuleList(
            DBlock(ch(r) + (0 if r == resolution else ch(r) // 2), ch(r), ch(r // 2))
            for r in reversed(scales(resolution)[1:]))
        self.final = DFinal(ch(4) + ch(4) // 2, ch(4), mbstd_group)
        self.n_scales = len(scales(resolution))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if not isinstance(xs, (list, tuple)) or len(xs) != self.n_scales:
            got = len(xs) if isinstance(xs, (list, tuple)) else type(xs).__name__
            raise ValueError(f"D expects a list of {self.n_scales} images coarse -> fine, got {got}")
        h = self.from_rgb(xs[-1])
        for i, blk in enumerate(self.blocks):
            if i:  # the cast keeps cat happy when autocast runs the features in lower precision than the images
                h = torch.cat([h, self.scale_rgb[i - 1](xs[-1 - i]).to(h.dtype)], 1)
            h = blk(h)
        return self.final(torch.cat([h, self.scale_rgb[-1](xs[0]).to(h.dtype)], 1))


@register("architecture", "msggan")
class MSGGAN(Architecture):
    """MSG-GAN: G outputs every scale 4..R (a list, coarse -> fine); D reads all of them (lin_cat combine).

    Pixel norm, equalized lr and minibatch stddev as in ProGAN; no growing. Channels at resolution r:
    min(channel_base // r, channel_max). G's outputs are linear (no tanh).
    """

    contract_options = {"resolution": 8, "latent_dim": 16, "channel_base": 64, "channel_max": 8}

    def __init__(self, resolution: int = 32, channels: int = 3, latent_dim: int = 128, channel_base: int = 2048,
                 channel_max: int = 128, mbstd_group: int = 4):
        check_options(resolution, channels, latent_dim, channel_base, channel_max, mbstd_group)
        self.resolution, self.channels, self.latent_dim = resolution, channels, latent_dim
        self.channel_base, self.channel_max, self.mbstd_group = channel_base, channel_max, mbstd_group

    def stage_resolutions(self) -> list[int]:
        return [self.resolution]  # does not grow: one stage at the final resolution

    def build_generator(self) -> nn.Module:
        return MSGGenerator(self.latent_dim, self.resolution, self.channels,
                            widths(self.channel_base, self.channel_max))

    def build_discriminator(self) -> nn.Module:
        return MSGDiscriminator(self.resolution, self.channels, widths(self.channel_base, self.channel_max),
                                self.mbstd_group)

    def prepare_real(self, images: torch.Tensor, resolution: int, alpha: float) -> list[torch.Tensor]:
        """One decoded batch ``[B, C, R, R]`` -> the pyramid coarse -> fine (``alpha`` is unused: no fade)."""
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            raise ValueError(f"expected [B, C, {self.resolution}, {self.resolution}] reals, got {list(images.shape)}")
        out = [images]
        while out[-1].shape[-1] > 4:
            out.append(downsample2x(out[-1]))
        return out[::-1]

    def render_samples(self, samples: list[torch.Tensor]) -> torch.Tensor:
        """Every scale nearest-upsampled to R, side by side coarse (left) -> fine (right): ``[N, C, R, R * S]``."""
        r = self.resolution
        return torch.cat([F.interpolate(x, size=(r, r), mode="nearest") for x in samples], dim=3)
