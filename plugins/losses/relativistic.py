"""Relativistic average GANs (Jolicoeur-Martineau, 2018): D estimates how much more realistic real data is than
the *average* fake (and vice versa), so G's loss also pushes real scores down — G sees the real logits too.

With C the critic's raw output, r̃ = C(x_r) - E[C(x_f)] and f̃ = C(x_f) - E[C(x_r)]:
- RaSGAN (standard):  D: -log σ(r̃) - log(1 - σ(f̃));     G: -log σ(f̃) - log(1 - σ(r̃))
- RaHingeGAN:         D: relu(1 - r̃) + relu(1 + f̃);      G: relu(1 - f̃) + relu(1 + r̃)
"""

from __future__ import annotations

import torch.nn.functional as F

from ganforge.api import Loss, PhaseContext
from ganforge.registry import register


def _relative(ctx: PhaseContext):
    r, f = ctx.real_logits, ctx.fake_logits
    return r - f.mean(), f - r.mean()


@register("loss", "ragan")
class RelativisticAverage(Loss):
    """Relativistic average standard GAN (RaSGAN): logistic loss on logits relative to the other side's mean."""

    needs_real_in_g = True

    def d_loss(self, ctx: PhaseContext):
        r, f = _relative(ctx)
        loss = F.softplus(-r).mean() + F.softplus(f).mean()
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx: PhaseContext):
        r, f = _relative(ctx)
        loss = F.softplus(-f).mean() + F.softplus(r).mean()
        return loss, {"loss_g": loss.detach()}


@register("loss", "rahinge")
class RelativisticAverageHinge(Loss):
    """Relativistic average hinge GAN (RaHingeGAN): hinge loss on logits relative to the other side's mean."""

    needs_real_in_g = True

    def d_loss(self, ctx: PhaseContext):
        r, f = _relative(ctx)
        loss = F.relu(1 - r).mean() + F.relu(1 + f).mean()
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx: PhaseContext):
        r, f = _relative(ctx)
        loss = F.relu(1 - f).mean() + F.relu(1 + r).mean()
        return loss, {"loss_g": loss.detach()}
