"""Wasserstein loss with gradient penalty (Gulrajani et al., 2017): D (a critic) maximises
E[D(x)] - E[D(G(z))] under a soft 1-Lipschitz constraint, λ E[(‖∇D(x̂)‖ - 1)²] on random interpolates x̂ of real
and fake samples. Usually trained with several critic steps per G step (``balancer: {type: alternate,
n_critic: 5}``) and Adam betas (0, 0.9) or (0.5, 0.9)."""

from __future__ import annotations

import torch

from ganforge.api import Loss, PhaseContext, leaves
from ganforge.registry import register


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, center: float = 1.0) -> torch.Tensor:
    """E[(‖∇D(x̂)‖ - center)²], x̂ = ε real + (1-ε) fake with ε ~ U(0, 1) per sample (torch's global RNG).

    The norm is taken per *logit*: when D judges several samples jointly (PacGAN packing gives ``B / pack``
    logits) the gradient of each logit w.r.t. all the inputs it sees is one vector."""
    first = leaves(real)[0]
    eps = torch.rand(first.shape[0], device=first.device, dtype=first.dtype)  # one ε per sample, every scale

    def mix(r, f):
        e = eps.view([-1] + [1] * (r.dim() - 1))
        return (e * r.detach() + (1 - e) * f.detach().to(r.dtype)).requires_grad_(True)

    # Multi-scale samples (MSG-GAN pyramids) interpolate every scale with the same ε: x̂ is one point of the
    # joint input space, and its gradient norm is taken over all scales together.
    x_hat = [mix(r, f) for r, f in zip(leaves(real), leaves(fake))]
    logits = D(x_hat if isinstance(real, (list, tuple)) else x_hat[0]).reshape(-1)
    grads = torch.autograd.grad(logits.sum(), x_hat, create_graph=True)
    norms = torch.cat([g.reshape(logits.numel(), -1).float() for g in grads], 1).norm(dim=1)
    return ((norms - center) ** 2).mean()


@register("loss", "wgan_gp")
class WGANGP(Loss):
    """Wasserstein loss with gradient penalty (WGAN-GP): critic E[D(G(z))] - E[D(x)] + λ·GP, G minimises
    -E[D(G(z))]. Optional drift term ε·E[D(x)²] (ProGAN) keeps the critic's output near zero."""

    def __init__(self, gp_weight: float = 10.0, center: float = 1.0, drift: float = 0.0):
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if center < 0:
            raise ValueError(f"center must be >= 0, got {center}")
        if drift < 0:
            raise ValueError(f"drift must be >= 0, got {drift}")
        self.gp_weight, self.center, self.drift = gp_weight, center, drift

    def d_loss(self, ctx: PhaseContext):
        wdist = ctx.real_logits.mean() - ctx.fake_logits.mean()  # the critic's Wasserstein estimate
        loss = -wdist
        stats = {"wdist": wdist.detach()}
        if self.gp_weight > 0:
            gp = gradient_penalty(ctx.D, ctx.real, ctx.fake, self.center)
            loss = loss + self.gp_weight * gp
            stats["gp"] = gp.detach()
        if self.drift > 0:
            loss = loss + self.drift * (ctx.real_logits ** 2).mean()
        stats["loss_d"] = loss.detach()
        return loss, stats

    def g_loss(self, ctx: PhaseContext):
        loss = -ctx.fake_logits.mean()
        return loss, {"loss_g": loss.detach()}
