"""The non-saturating GAN loss (Goodfellow et al., 2014, section 3): D minimises BCE with real=1, fake=0; G
maximises log D(G(z)) instead of minimising log(1 - D(G(z))), which keeps its gradient alive early on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.api import Loss, PhaseContext
from ganforge.registry import register


@register("loss", "nonsaturating")
class NonSaturating(Loss):
    """Non-saturating logistic loss: D on real=1/fake=0, G maximises log D(G(z)). Optional one-sided label
    smoothing of the real target."""

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def d_loss(self, ctx: PhaseContext):
        # BCE-with-logits against real=1 (or 1 - smoothing) and fake=0, in its numerically stable form
        target = torch.full_like(ctx.real_logits, 1.0 - self.label_smoothing)
        loss_real = F.binary_cross_entropy_with_logits(ctx.real_logits, target)
        loss_fake = F.softplus(ctx.fake_logits).mean()
        loss = loss_real + loss_fake
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx: PhaseContext):
        loss = F.softplus(-ctx.fake_logits).mean()
        return loss, {"loss_g": loss.detach()}
