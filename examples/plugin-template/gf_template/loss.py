"""``template_softplus``: the logistic GAN loss written with softplus, with a temperature on D's logits."""

from __future__ import annotations

import torch.nn.functional as F

from ganforge.api import Loss, PhaseContext
from ganforge.registry import register


@register("loss", "template_softplus")
class TemplateSoftplus(Loss):
    """Logistic loss via softplus (template): D minimises softplus(-D(x)/T) + softplus(D(G(z))/T), G minimises
    softplus(-D(G(z))/T). T=1 is the non-saturating GAN loss."""

    api_version = 1

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def d_loss(self, ctx: PhaseContext):
        t = self.temperature
        loss = F.softplus(-ctx.real_logits / t).mean() + F.softplus(ctx.fake_logits / t).mean()
        # stats: detached scalar tensors (no .item(): it would force a GPU sync every step)
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx: PhaseContext):
        loss = F.softplus(-ctx.fake_logits / self.temperature).mean()
        return loss, {"loss_g": loss.detach()}
