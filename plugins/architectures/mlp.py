"""Small MLPs for 2D point GANs (the mode-collapse lab): G maps latents to points ``[B, dim]``, D maps points to
logits. Options for the remedies the literature tests on these toys: PacGAN packing (D judges ``pack`` samples
jointly) and spectral normalization of D."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ganforge.api import Architecture
from ganforge.registry import register

_ACT = {"relu": lambda: nn.ReLU(), "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": lambda: nn.Tanh()}


def _mlp(n_in: int, width: int, depth: int, n_out: int, act: str, sn: bool = False) -> nn.Sequential:
    wrap = nn.utils.parametrizations.spectral_norm if sn else (lambda m: m)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [wrap(nn.Linear(n_in if i == 0 else width, width)), _ACT[act]()]
    layers.append(wrap(nn.Linear(width if depth else n_in, n_out)))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, dim: int, width: int, depth: int, act: str, scale: float):
        super().__init__()
        self.net = _mlp(latent_dim, width, depth, dim, act)
        self.scale = scale

    def forward(self, z):
        return self.net(z) * self.scale


class MLPDiscriminator(nn.Module):
    """``pack`` consecutive samples are concatenated and judged together (PacGAN): logits ``[B / pack]``."""

    def __init__(self, dim: int, width: int, depth: int, act: str, scale: float, pack: int, sn: bool):
        super().__init__()
        self.net = _mlp(dim * pack, width, depth, 1, act, sn)
        self.scale, self.pack, self.dim = scale, pack, dim

    def forward(self, x):
        if x.shape[0] % self.pack:
            raise ValueError(f"batch of {x.shape[0]} is not a multiple of pack={self.pack}")
        return self.net(x.reshape(x.shape[0] // self.pack, self.dim * self.pack) / self.scale).flatten()


@register("architecture", "mlp")
class MLP(Architecture):
    """MLP GAN for 2D points (mode-collapse lab): G z -> R^dim, D R^dim -> logit; PacGAN packing, spectral norm."""

    contract_options = {"g_width": 16, "d_width": 16, "latent_dim": 4}

    def __init__(self, dim: int = 2, latent_dim: int = 16, g_width: int = 128, g_depth: int = 3,
                 d_width: int = 128, d_depth: int = 3, g_activation: Literal["relu", "leaky_relu", "tanh"] = "relu",
                 d_activation: Literal["relu", "leaky_relu", "tanh"] = "leaky_relu", pack: int = 1,
                 scale: float = 1.0, d_spectral_norm: bool = False):
        if min(dim, latent_dim, g_width, d_width) < 1:
            raise ValueError("dim, latent_dim, g_width and d_width must be >= 1")
        if g_depth < 0 or d_depth < 0:
            raise ValueError(f"g_depth and d_depth must be >= 0, got {g_depth}, {d_depth}")
        if pack < 1:
            raise ValueError(f"pack must be >= 1, got {pack}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.dim, self.latent_dim, self.pack, self.scale = dim, latent_dim, pack, scale
        self.g = (g_width, g_depth, g_activation)
        self.d = (d_width, d_depth, d_activation)
        self.d_spectral_norm = d_spectral_norm
        # Not images: the engine's image attributes describe one point; sample_shape is the real shape.
        self.sample_shape, self.channels, self.resolution = (dim,), dim, 1

    def build_generator(self) -> nn.Module:
        return MLPGenerator(self.latent_dim, self.dim, *self.g, self.scale)

    def build_discriminator(self) -> nn.Module:
        return MLPDiscriminator(self.dim, *self.d, self.scale, self.pack, self.d_spectral_norm)

    def render_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """A scatter plot of the points (first two coordinates) as one image ``[1, 3, 256, 256]`` in [-1, 1]."""
        from ganforge_plugins.metrics.mode_coverage import scatter_image

        img = scatter_image(samples.detach().float().cpu()[:, :2], extent=1.25 * self.scale)
        return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
