"""Exponential moving average of G (the weights used for samples and evaluation)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``model`` (a copy of G) as an EMA of the live G, with a half-life given in kimg (StyleGAN's
    convention: independent of batch size). With ``rampup`` the half-life is capped at ``rampup * kimg_so_far``
    so early, bad weights are forgotten quickly."""

    def __init__(self, generator: nn.Module, half_life_kimg: float, rampup: float | None = None):
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)
        self.half_life_kimg = half_life_kimg
        self.rampup = rampup

    def beta(self, batch_images: int, kimg_done: float) -> float:
        half = self.half_life_kimg
        if self.rampup is not None:
            half = min(half, kimg_done * self.rampup)
        if half <= 0:
            return 0.0
        return 0.5 ** (batch_images / (half * 1000.0))

    @torch.no_grad()
    def update(self, generator: nn.Module, batch_images: int, kimg_done: float) -> None:
        beta = self.beta(batch_images, kimg_done)
        for p_ema, p in zip(self.model.parameters(), generator.parameters()):
            p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
        # Buffers (batch-norm statistics) are copied, not averaged, as in StyleGAN2-ADA.
        for b_ema, b in zip(self.model.buffers(), generator.buffers()):
            b_ema.copy_(b)

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)
