"""The original minimax GAN loss (Goodfellow et al., 2014, eq. 1): G minimises log(1 - D(G(z))) directly. It
saturates: when D rejects fakes confidently, G's gradient vanishes — kept as the baseline the others fix."""

from __future__ import annotations

import torch.nn.functional as F

from ganforge.api import Loss, PhaseContext
from ganforge.registry import register


@register("loss", "minimax")
class Minimax(Loss):
    """Saturating minimax loss: D on real=1/fake=0 (BCE), G minimises log(1 - D(G(z)))."""

    def d_loss(self, ctx: PhaseContext):
        # -log sigmoid(r) - log(1 - sigmoid(f)) = softplus(-r) + softplus(f), numerically stable
        loss = F.softplus(-ctx.real_logits).mean() + F.softplus(ctx.fake_logits).mean()
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx: PhaseContext):
        loss = -F.softplus(ctx.fake_logits).mean()  # log(1 - sigmoid(f)) = -softplus(f)
        return loss, {"loss_g": loss.detach()}
