"""StyleGAN2-like architecture (Karras et al., 2020): mapping network z -> w, synthesis from a learned constant
with modulated/demodulated 3x3 convolutions and per-pixel noise, skip-connection G (a toRGB at every scale),
residual D with minibatch standard deviation, equalized learning rate everywhere.

G exposes ``G.mapping`` (z -> ws ``[B, num_ws, w_dim]``, with style mixing while training and truncation when
asked) and ``G.synthesis`` (ws -> images): the path-length regularizer differentiates through that split. G also
owns ``pl_mean``, the path-length running mean, as a buffer (see ``plugins/regularizers/path_length.py`` for why).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ganforge.api import Architecture
from ganforge.registry import register

from .stylegan_layers import EqualConv2d, EqualLinear, SynthesisLayer, ToRGB, binomial_filter, minibatch_std, upsample2d


class MappingNetwork(nn.Module):
    """z -> w by an MLP with a small learning-rate multiplier, broadcast to one w per synthesis input.

    While training it tracks ``w_avg`` (the centre of W, used by truncation) and, with probability
    ``mixing_prob``, switches to the w of a second latent from a random layer on (style mixing: adjacent styles
    must not rely on each other). Both use tensor ops only: no host sync, and torch.compile can trace it."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, layers: int, lr_mul: float, w_avg_beta: float,
                 mixing_prob: float):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.net = nn.Sequential(*[EqualLinear(a, b, act=True, lr_mul=lr_mul) for a, b in zip(dims, dims[1:])])
        self.num_ws, self.w_avg_beta, self.mixing_prob = num_ws, w_avg_beta, mixing_prob
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)  # latents on the sphere: scale-free input
        return self.net(z)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        w = self.embed(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        ws = w.unsqueeze(1).expand(-1, self.num_ws, -1)
        if self.training and self.mixing_prob > 0:
            w2 = self.embed(torch.randn_like(z))
            cutoff = torch.randint(1, self.num_ws, (), device=z.device)
            cutoff = torch.where(torch.rand((), device=z.device) < self.mixing_prob, cutoff, self.num_ws)
            later = torch.arange(self.num_ws, device=z.device) >= cutoff  # layers that take the second style
            ws = torch.where(later[None, :, None], w2.unsqueeze(1), ws)
        if truncation_psi != 1.0:  # pull every w towards the average: quality over diversity (psi = 0: the mean)
            ws = self.w_avg.to(ws.dtype).lerp(ws, truncation_psi)
        return ws


class SynthesisNetwork(nn.Module):
    """ws -> image. Each resolution: upsampling modulated conv, modulated conv, and a toRGB whose output is added
    to the upsampled image so far (skip architecture: no progressive growing needed)."""

    def __init__(self, w_dim: int, resolution: int, channels: int, channel_base: int, channel_max: int,
                 clamp: float | None):
        super().__init__()
        ch = lambda r: min(channel_base // r, channel_max)
        self.const = nn.Parameter(torch.randn(ch(4), 4, 4))
        self.conv4 = SynthesisLayer(ch(4), ch(4), w_dim, 4, clamp=clamp, noise_seed=0)
        self.rgb4 = ToRGB(ch(4), channels, w_dim, clamp=clamp)
        self.blocks = nn.ModuleList()
        r, seed = 8, 1
        while r <= resolution:
            blk = nn.Module()
            blk.conv0 = SynthesisLayer(ch(r // 2), ch(r), w_dim, r, up=True, clamp=clamp, noise_seed=seed)
            blk.conv1 = SynthesisLayer(ch(r), ch(r), w_dim, r, clamp=clamp, noise_seed=seed + 1)
            blk.rgb = ToRGB(ch(r), channels, w_dim, clamp=clamp)
            self.blocks.append(blk)
            r, seed = r * 2, seed + 2
        self.num_ws = 2 + 2 * len(self.blocks)  # conv4, then per block conv0/conv1; toRGB shares the next index
        self.register_buffer("filter", binomial_filter(), persistent=False)  # image upsampling

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        x = self.conv4(x, ws[:, 0])
        img = self.rgb4(x, ws[:, 1])
        i = 1
        for blk in self.blocks:
            x = blk.conv0(x, ws[:, i])
            x = blk.conv1(x, ws[:, i + 1])
            img = upsample2d(img, self.filter) + blk.rgb(x, ws[:, i + 2])
            i += 2
        return img


class Generator(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, resolution: int, channels: int, channel_base: int, channel_max: int,
                 mapping_layers: int, mapping_lr_mul: float, w_avg_beta: float, mixing_prob: float,
                 clamp: float | None):
        super().__init__()
        self.synthesis = SynthesisNetwork(w_dim, resolution, channels, channel_base, channel_max, clamp)
        self.mapping = MappingNetwork(z_dim, w_dim, self.synthesis.num_ws, mapping_layers, mapping_lr_mul,
                                      w_avg_beta, mixing_prob)
        # Path-length running mean: a buffer, so it is checkpointed with G and DDP re-broadcasts rank 0's value.
        self.register_buffer("pl_mean", torch.zeros(()))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi))


class DBlock(nn.Module):
    """Residual D block: 3x3 conv, 3x3 conv with 2x downsampling, plus a 1x1 downsampling skip; both branches
    scaled by sqrt(1/2) so the sum keeps unit variance."""

    def __init__(self, in_ch: int, out_ch: int, clamp: float | None):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3, clamp=clamp)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3, down=True, clamp=clamp)
        self.skip = EqualConv2d(in_ch, out_ch, 1, act=False, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = math.sqrt(0.5)
        return self.skip(x, gain=g) + self.conv1(self.conv0(x), gain=g)


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, channel_base: int, channel_max: int, mbstd_group: int,
                 clamp: float | None):
        super().__init__()
        ch = lambda r: min(channel_base // r, channel_max)
        self.from_rgb = EqualConv2d(channels, ch(resolution), 1, clamp=clamp)
        self.blocks = nn.Sequential()
        r = resolution
        while r > 4:
            self.blocks.append(DBlock(ch(r), ch(r // 2), clamp))
            r //= 2
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(ch(4) + 1, ch(4), 3, clamp=clamp)
        self.fc = EqualLinear(ch(4) * 16, ch(4), act=True)
        self.out = EqualLinear(ch(4), 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.from_rgb(img))
        x = self.conv(minibatch_std(x, self.mbstd_group))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


@register("architecture", "stylegan")
class StyleGAN(Architecture):
    """StyleGAN2-like: mapping net, modulated convs, noise, skip G, residual D with minibatch std, equalized lr.

    Channels at resolution r: min(channel_base / r, channel_max) (StyleGAN2 paper 256: 16384/512; 1024: 32768/512).
    Use with regularizers r1 and path_length; ``sample.truncation_psi`` < 1 truncates samples.
    """

    contract_options = {"resolution": 16, "latent_dim": 16, "channel_base": 256, "channel_max": 16,
                        "mapping_layers": 2}
    supports_truncation = True  # G(z, truncation_psi=...) pulls w toward w_avg

    def __init__(self, resolution: int = 256, channels: int = 3, latent_dim: int = 512, w_dim: int | None = None,
                 mapping_layers: int = 8, mapping_lr_mul: float = 0.01, channel_base: int = 16384,
                 channel_max: int = 512, mixing_prob: float = 0.9, w_avg_beta: float = 0.995, mbstd_group: int = 4,
                 conv_clamp: float | None = None):
        if not isinstance(resolution, int) or not 16 <= resolution <= 1024 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two from 16 to 1024, got {resolution!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        w_dim = latent_dim if w_dim is None else w_dim
        if min(latent_dim, w_dim, mapping_layers, channel_max, mbstd_group) <= 0:
            raise ValueError("latent_dim, w_dim, mapping_layers, channel_max and mbstd_group must be > 0")
        if channel_base // resolution <= 0:
            raise ValueError(f"channel_base ({channel_base}) must be >= resolution ({resolution}): "
                             "the top layers would have no channels")
        if not 0 <= mixing_prob <= 1 or not 0 <= w_avg_beta < 1 or mapping_lr_mul <= 0:
            raise ValueError("need 0 <= mixing_prob <= 1, 0 <= w_avg_beta < 1 and mapping_lr_mul > 0")
        if conv_clamp is not None and conv_clamp <= 0:
            raise ValueError(f"conv_clamp must be > 0 or null, got {conv_clamp}")
        self.resolution, self.channels, self.latent_dim, self.w_dim = resolution, channels, latent_dim, w_dim
        self.mapping_layers, self.mapping_lr_mul = mapping_layers, mapping_lr_mul
        self.channel_base, self.channel_max = channel_base, channel_max
        self.mixing_prob, self.w_avg_beta, self.mbstd_group, self.conv_clamp = (mixing_prob, w_avg_beta,
                                                                                mbstd_group, conv_clamp)

    def build_generator(self) -> nn.Module:
        return Generator(self.latent_dim, self.w_dim, self.resolution, self.channels, self.channel_base,
                         self.channel_max, self.mapping_layers, self.mapping_lr_mul, self.w_avg_beta,
                         self.mixing_prob, self.conv_clamp)

    def build_discriminator(self) -> nn.Module:
        return Discriminator(self.resolution, self.channels, self.channel_base, self.channel_max, self.mbstd_group,
                             self.conv_clamp)
