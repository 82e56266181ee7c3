"""The contracts plugins implement (shape, not inheritance: subclassing these is optional but documents intent).

Plugins receive tensors and modules; they never hold or call the Accelerator, so they are testable alone and
distribution stays the engine's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

Stats = dict[str, torch.Tensor]  # detached scalar tensors; the engine reduces them across ranks when it needs to


class Architecture:
    """Builds G and D. G maps latents ``[B, latent_dim]`` to images ``[B, C, R, R]`` (about [-1, 1]); D maps
    images to logits ``[B]``. G's forward may take ``truncation_psi`` (used for samples when the recipe sets
    ``sample.truncation_psi``); anything G does only while training (style mixing, tracking the mean w) it does
    when ``self.training`` is True — samples come from the EMA copy in eval mode."""

    latent_dim: int
    resolution: int
    channels: int

    def build_generator(self) -> nn.Module:
        raise NotImplementedError

    def build_discriminator(self) -> nn.Module:
        raise NotImplementedError

    def sample_latents(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def render_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """Turn G's outputs into images ``[N, C, H, W]`` in [-1, 1] for the sample grid (identity for image
        GANs; a scatter plot for 2D point GANs)."""
        return samples


@dataclass
class PhaseContext:
    """What a loss sees in one phase. ``real``/``real_logits`` are None in the G phase unless the loss sets
    ``needs_real_in_g`` (relativistic losses)."""

    D: nn.Module
    fake: torch.Tensor | None = None
    fake_logits: torch.Tensor | None = None
    real: torch.Tensor | None = None
    real_logits: torch.Tensor | None = None
    step: int = 0
    G: nn.Module | None = None
    arch: Architecture | None = None
    batch_size: int = 0
    extra: dict = field(default_factory=dict)


class Loss:
    """D-phase and G-phase losses from D's outputs. Each returns ``(loss, stats)``."""

    needs_real_in_g: bool = False

    def d_loss(self, ctx: PhaseContext) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def g_loss(self, ctx: PhaseContext) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError


class Balancer:
    """Decides which phases run in an iteration: ``plan`` returns a list such as ``["D", "D", "G"]``.

    ``needs_stats``: when True the engine passes the previous iteration's statistics, *averaged over all ranks*
    (every rank must take the same decision, or DDP hangs); when False it passes ``{}`` and saves the sync.
    """

    needs_stats: bool = False

    def plan(self, step: int, stats: dict[str, float]) -> list[str]:
        raise NotImplementedError

    def log_stats(self) -> dict[str, float]:
        """Decisions to log at each log step (e.g. D steps skipped so far, current ratio)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Regularizer:
    """A penalty applied every ``interval`` steps of its phase ("D" or "G"): lazy regularization.

    ``penalty(ctx)`` returns ``(penalty, stats)``; the engine multiplies the penalty by ``interval`` (so its
    average strength does not depend on how often it runs) and back-propagates it into the phase's network
    before that phase's optimizer step. In the D phase ``ctx.real`` requires grad and ``ctx.real_logits`` are
    D's outputs on it (R1); in the G phase the plugin gets ``ctx.G`` and draws what it needs (path length).
    ``lazy_ratio`` tells the engine how to rescale Adam's lr and betas (StyleGAN2: c = interval / (interval + 1)).
    """

    phase: str = "D"
    interval: int = 1

    def penalty(self, ctx: PhaseContext) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Augment:
    """A differentiable augmentation applied to real and fake images before D, in both phases.

    ``needs_stats``/``update(step, stats)``: adaptive augmentations (ADA) receive the iteration's statistics
    averaged over ranks (including ``d_real_sign``, the mean sign of D on reals) so ``p`` stays identical on every
    rank. ``p`` and any other state go through ``state_dict`` into the checkpoint.
    """

    needs_stats: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, step: int, stats: dict[str, float]) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DatasetSource:
    """Turns a recipe's ``data:`` block into webdataset shard URLs of images.

    ``prepare()`` runs once per machine (local main process first) before ``urls()``; it may write shards
    (embedded datasets) and must be idempotent and atomic.
    """

    def prepare(self) -> None:
        pass

    def urls(self) -> list[str]:
        raise NotImplementedError

    def batches(self, *, batch_size: int, seed: int, rank: int, world_size: int, start_batch: int):
        """Optional. Sources that are not image shards (e.g. the lab's 2D mixtures) return an iterator of
        ``{"image": tensor [B, ...], "skipped": 0}`` directly; it must be a pure function of its arguments and
        continue exactly at ``start_batch`` (resume). Return None (the default) to stream ``urls()``."""
        return None
