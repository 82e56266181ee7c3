"""Path-length regularization (StyleGAN2): a fixed-size step in W should move the image by a fixed amount."""

from __future__ import annotations

import math

import torch

from ganforge.api import PhaseContext, Regularizer
from ganforge.registry import register


@register("regularizer", "path_length")
class PathLength(Regularizer):
    """Path length: weight * E (|J_w^T y| - a)^2, y ~ N(0, I) / sqrt(H W), a = running mean of |J_w^T y|;
    lazy, every ``interval`` G steps (StyleGAN2: 4) on batch_size / batch_shrink fresh latents.

    Needs a generator exposing ``G.mapping(z) -> ws [B, num_ws, w_dim]`` and ``G.synthesis(ws) -> images``
    (architecture ``stylegan``). The running mean ``a`` lives in ``G.pl_mean`` when G has that buffer.

    Why a G buffer: every rank draws its own latents, so each rank's new mean differs, and a plugin cannot average
    over ranks (no Accelerator). A buffer of the DDP-wrapped G is re-broadcast from rank 0 at the next forward of
    G that follows a synchronised backward, which always happens before the next path-length step (there are
    ``interval - 1`` plain G steps in between). So every rank starts every path-length step from rank 0's value,
    the checkpoint (rank 0's G) holds exactly what every rank would use next, and a resumed run equals an
    uninterrupted one. A G without the buffer falls back to a mean kept here (checkpointed via state_dict); that
    is exact on one process, and on several each rank tracks its own batches (as StyleGAN2-ADA does).
    """

    phase = "G"

    def __init__(self, weight: float = 2.0, interval: int = 4, decay: float = 0.01, batch_shrink: int = 2):
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval!r}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if not isinstance(batch_shrink, int) or batch_shrink < 1:
            raise ValueError(f"batch_shrink must be an integer >= 1, got {batch_shrink!r}")
        self.weight, self.interval, self.decay, self.batch_shrink = weight, interval, decay, batch_shrink
        self._pl_mean = torch.zeros(())  # fallback for generators without a pl_mean buffer

    @staticmethod
    def direction(img: torch.Tensor) -> torch.Tensor:
        """Random image-space direction; scaled so |J^T y| does not depend on the resolution."""
        return torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])

    def penalty(self, ctx: PhaseContext):
        G = ctx.G
        if not (hasattr(G, "mapping") and hasattr(G, "synthesis")):
            raise ValueError("path_length needs a generator with .mapping and .synthesis (e.g. architecture "
                             f"'stylegan'); got {type(G).__name__}")
        device = next(G.parameters()).device
        z = ctx.arch.sample_latents(max(1, ctx.batch_size // self.batch_shrink), device=device)
        ws = G.mapping(z)  # with style mixing, as in StyleGAN2
        img = G.synthesis(ws)
        (grad,) = torch.autograd.grad((img.float() * self.direction(img).float()).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()  # [B]
        buf = getattr(G, "pl_mean", None)
        if not isinstance(buf, torch.Tensor):
            buf = self._pl_mean = self._pl_mean.to(device)
        with torch.no_grad():
            buf.copy_(buf.lerp(lengths.mean().detach().to(buf.dtype), self.decay))
        target = buf.detach().clone()  # the updated mean is the target (a constant for the gradient)
        penalty = (lengths - target).square().mean() * self.weight
        return penalty, {"pl_penalty": penalty.detach(), "pl_length": lengths.detach().mean(), "pl_mean": target}

    def state_dict(self) -> dict:
        return {"pl_mean": self._pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if "pl_mean" in state:
            self._pl_mean = state["pl_mean"].clone()
