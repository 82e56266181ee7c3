"""R1 gradient penalty on real images (Mescheder et al., 2018), lazily as in StyleGAN2; R2 (plugins/regularizers/
r2.py) is the same penalty on fakes."""

from __future__ import annotations

import torch

from ganforge.api import PhaseContext, Regularizer, leaves, tree_map
from ganforge.registry import register


@register("regularizer", "r1")
class R1(Regularizer):
    """R1: gamma/2 * E ||grad_x D(x)||^2 on reals; lazy, every ``interval`` D steps (StyleGAN2: 16).
    ``method: finite_difference`` estimates the squared gradient norm from D at x and x + fd_eps * v (v Gaussian)
    instead of a double backward (cheaper; an O(fd_eps)-biased, noisier estimate).

    The engine hands over reals that require grad and D's logits on them (after augmentation, so the gradient is
    taken w.r.t. the un-augmented image as in StyleGAN2-ADA), multiplies the penalty by ``interval`` and rescales
    D's Adam lr/betas by interval / (interval + 1).
    """

    phase = "D"
    inputs = ("real",)
    key = "r1"  # prefix of the logged statistics
    schedulable = ("gamma",)

    def __init__(self, gamma: float = 10.0, interval: int = 16, method: str = "exact", fd_eps: float = 0.01):
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval!r}")
        if method not in ("exact", "finite_difference"):
            raise ValueError(f"method must be 'exact' or 'finite_difference', got {method!r}")
        if fd_eps <= 0:
            raise ValueError(f"fd_eps must be > 0, got {fd_eps}")
        self.gamma, self.interval, self.method, self.fd_eps = gamma, interval, method, fd_eps

    @property
    def replays_critic(self) -> bool:  # the finite difference needs D at x + eps v with x's augmentation
        return self.method == "finite_difference"

    def penalty(self, ctx: PhaseContext):
        (name,) = self.inputs
        samples, logits = getattr(ctx, name), getattr(ctx, f"{name}_logits")
        xs = leaves(samples) if samples is not None else []
        if not xs or logits is None or not all(x.requires_grad for x in xs):
            raise ValueError(f"{self.key} needs the D phase's {name}s (requiring grad) and D's "
                             "logits on them")
        if self.method == "finite_difference":
            return self._finite_difference(ctx, name, samples, logits)
        # create_graph: the penalty is itself differentiated w.r.t. D's weights (double backward; never compiled).
        # A multi-scale sample (pyramid) is one input: the squared norm sums over all its scales.
        grads = torch.autograd.grad(logits.float().sum(), xs, create_graph=True)
        grad_sq = sum(g.float().square().flatten(1).sum(1) for g in grads)  # [B]: ||grad_x D(x)||^2 per image
        penalty = grad_sq.mean() * (self.gamma / 2)
        return penalty, {f"{self.key}_penalty": penalty.detach(), f"{self.key}_grad_sq": grad_sq.detach().mean()}

    def _finite_difference(self, ctx, name, samples, logits):
        """E_v[(grad D . v)^2] = ||grad D||^2 for v ~ N(0, I): one more D forward at x + eps * v (with the same
        augmentation draw) replaces the double backward; the gradient w.r.t. D's weights is a plain backward
        through both forwards. Biased by O(eps) and noisier than the exact penalty (one direction per sample)."""
        critic = ctx.extra.get(f"{name}_critic")
        if critic is None:
            raise ValueError(f"{self.key} with method finite_difference needs the engine's {name}_critic")
        moved = tree_map(lambda t: t.detach() + self.fd_eps * torch.randn_like(t), samples)
        slope = (critic(moved).float() - logits.float()) / self.fd_eps  # [B]: ~ grad_x D(x) . v
        penalty = slope.square().mean() * (self.gamma / 2)
        return penalty, {f"{self.key}_penalty": penalty.detach(), f"{self.key}_grad_sq": slope.detach().square().mean()}
