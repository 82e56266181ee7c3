"""Least-squares GAN (Mao et al., 2017): D regresses real to b and fake to a, G pulls its fakes to c."""

from __future__ import annotations

from ganforge.api import Loss, PhaseContext
from ganforge.registry import register


@register("loss", "least_squares")
class LeastSquares(Loss):
    """LSGAN: D minimises ½(D(x)-b)² + ½(D(G(z))-a)², G minimises ½(D(G(z))-c)² (defaults a=0, b=c=1)."""

    def __init__(self, fake_target: float = 0.0, real_target: float = 1.0, g_target: float = 1.0):
        if fake_target == real_target:
            raise ValueError(f"fake_target and real_target must differ, both are {real_target}")
        self.a, self.b, self.c = fake_target, real_target, g_target

    def d_loss(self, ctx: PhaseContext):
        loss = 0.5 * ((ctx.real_logits - self.b) ** 2).mean() + 0.5 * ((ctx.fake_logits - self.a) ** 2).mean()
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx: PhaseContext):
        loss = 0.5 * ((ctx.fake_logits - self.c) ** 2).mean()
        return loss, {"loss_g": loss.detach()}
