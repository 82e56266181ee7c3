"""Hinge loss (Lim & Ye, 2017; used by SAGAN and BigGAN): D is a margin classifier, G raises D's score."""

from __future__ import annotations

import torch.nn.functional as F

from ganforge.api import Loss, PhaseContext
from ganforge.registry import register


@register("loss", "hinge")
class Hinge(Loss):
    """Hinge loss: D minimises relu(m - D(x)) + relu(m + D(G(z))), G minimises -D(G(z))."""

    def __init__(self, margin: float = 1.0):
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin

    def d_loss(self, ctx: PhaseContext):
        loss = F.relu(self.margin - ctx.real_logits).mean() + F.relu(self.margin + ctx.fake_logits).mean()
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx: PhaseContext):
        loss = -ctx.fake_logits.mean()
        return loss, {"loss_g": loss.detach()}
