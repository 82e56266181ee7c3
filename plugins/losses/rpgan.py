"""Relativistic pairing GAN (RpGAN; Jolicoeur-Martineau 2018, the loss of R3GAN, Huang et al. 2024): D judges each
real *against a fake paired with it*, not against a fixed label or the other side's mean.

With C the critic's raw output and pairs (x_r, x_f) drawn together:
- D: E[softplus(C(x_f) - C(x_r))] = -E[log σ(C(x_r) - C(x_f))]
- G: E[softplus(C(x_r) - C(x_f))]
Why: the pairing objective's landscape has no mode-dropping local minima (Sun et al., 2020), and with R1 + R2 it
converges locally (R3GAN), which is what lets R3GAN train a plain, normalisation-free ResNet. Use it with the
``r1`` regularizer (R3GAN also penalises fakes with R2, not a built-in regularizer yet).
"""

from __future__ import annotations

import torch.nn.functional as F

from ganforge.api import Loss, PhaseContext
from ganforge.registry import register


def _gap(ctx: PhaseContext):
    """C(x_r) - C(x_f) per pair. The engine draws as many fakes as reals; a mismatch would be an engine bug, so it
    fails loudly rather than silently pairing a prefix."""
    r, f = ctx.real_logits, ctx.fake_logits
    if r is None or r.shape != f.shape:
        raise ValueError(f"rpgan pairs reals with fakes one to one: got logits of shape "
                         f"{None if r is None else tuple(r.shape)} and {tuple(f.shape)}")
    return r.float() - f.float()


@register("loss", "rpgan")
class RelativisticPairing(Loss):
    """Relativistic pairing GAN (R3GAN's loss): D minimises softplus(D(fake) - D(real)) per real/fake pair, G
    minimises softplus(D(real) - D(fake))."""

    needs_real_in_g = True  # G's loss compares each fake with a real: the G phase must draw reals too

    def d_loss(self, ctx: PhaseContext):
        loss = F.softplus(-_gap(ctx)).mean()
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx: PhaseContext):
        loss = F.softplus(_gap(ctx)).mean()
        return loss, {"loss_g": loss.detach()}
