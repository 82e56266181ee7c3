"""The contracts plugins implement (shape, not inheritance: subclassing these is optional but documents intent).

Plugins receive tensors and modules; they never hold or call the Accelerator, so they are testable alone and
distribution stays the engine's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .registry import API_VERSION  # noqa: F401  (the plugin contract's version; plugins may declare api_version)

Stats = dict[str, torch.Tensor]  # detached scalar tensors; the engine reduces them across ranks when it needs to
Sample = "torch.Tensor | list[torch.Tensor]"  # one batch, or a multi-scale pyramid coarse -> fine (MSG-GAN)


def tree_map(fn, x):
    """Apply ``fn`` to every tensor of a sample (a tensor or a list/tuple of tensors, coarse -> fine). Everything
    that touches samples (augment, R1, interpolation, memory format, diagnostics) goes through this, so a
    multi-scale architecture needs no special case anywhere."""
    if isinstance(x, (list, tuple)):
        return type(x)(tree_map(fn, v) for v in x)
    return fn(x) if isinstance(x, torch.Tensor) else x


def leaves(x) -> list[torch.Tensor]:
    """The tensors of a sample, coarse -> fine."""
    return [t for v in x for t in leaves(v)] if isinstance(x, (list, tuple)) else [x]


def batch_size(x) -> int:
    return leaves(x)[0].shape[0]


def finest(x) -> torch.Tensor:
    """The full-resolution member of a sample (itself for a plain tensor)."""
    return leaves(x)[-1]


class Architecture:
    """Builds G and D. G maps latents ``[B, latent_dim]`` to images ``[B, C, R, R]`` (about [-1, 1]) or to a
    pyramid (list coarse -> fine, MSG-GAN); D maps what G makes to logits ``[B]``. Anything G does only while
    training (style mixing, tracking the mean w) it does when ``self.training`` is True — samples come from the
    EMA copy in eval mode.

    Optional parts the engine uses generically (defaults below; plugins need not subclass this class):
    - ``supports_truncation`` and ``generate(G, z, truncation_psi)``: sampling with the truncation trick.
    - ``stage_resolutions()``: the resolutions it can train at; more than one means it grows progressively.
      Its G/D modules then expose ``set_stage(resolution, alpha)`` (plain attributes, no new parameters: layers
      of later stages exist from the start and get no gradient, hence no Adam state, until their stage).
    - ``prepare_real(images, resolution, alpha)``: what D sees of a real batch decoded at the stage resolution
      (a fade-in blend for ProGAN, a pyramid for MSG-GAN).
    """

    latent_dim: int
    resolution: int
    channels: int
    supports_truncation: bool = False

    def build_generator(self) -> nn.Module:
        raise NotImplementedError

    def build_discriminator(self) -> nn.Module:
        raise NotImplementedError

    def sample_latents(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def generate(self, G: nn.Module, z: torch.Tensor, truncation_psi: float = 1.0):
        if truncation_psi != 1.0:
            return G(z, truncation_psi=truncation_psi)
        return G(z)

    def stage_resolutions(self) -> list[int]:
        return [self.resolution]

    def prepare_real(self, images: torch.Tensor, resolution: int, alpha: float):
        return images

    def render_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """Turn G's outputs into images ``[N, C, H, W]`` in [-1, 1] for the sample grid (identity for image
        GANs; a scatter plot for 2D point GANs)."""
        return samples


@dataclass
class PhaseContext:
    """What a loss sees in one phase. ``real``/``real_logits`` are None in the G phase unless the loss sets
    ``needs_real_in_g`` (relativistic losses). ``real``/``fake`` are samples: a tensor, or a pyramid (list)
    for multi-scale architectures — use ``tree_map``/``leaves`` rather than assuming a tensor."""

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
    """A penalty on the network of its phase ("D" or "G"), every ``interval`` runs of that phase.

    ``interval == 1``: folded into the main phase (one backward of loss + penalty, no optimizer correction).
    ``interval = k > 1``: lazy regularization as in StyleGAN2 — a phase of its own ("D_reg:R1", shared by all
    penalties of that network with the same k) with its own optimizer step after every k-th main step, the penalty
    multiplied by k (same average strength), and that network's Adam lr *= c, betas **= c with c = k / (k + 1)
    because it now takes k + 1 steps per k iterations.
    In the D phase the penalty gets the samples named in ``inputs`` ("real" for R1, "fake" for R2, or both):
    ``ctx.real``/``ctx.fake`` require grad and ``ctx.real_logits``/``ctx.fake_logits`` are D's outputs on them; in
    the G phase the plugin gets ``ctx.G`` and draws what it needs (path length). Attributes named in
    ``schedulable`` may be driven by the recipe's ``schedule.values`` (e.g. ``regularizers[0].gamma``).
    With ``replays_critic`` true, ``ctx.extra["real_critic"]``/``["fake_critic"]`` run D on other inputs with the
    same augmentation draw as the logits given (finite-difference penalties); the snapshot costs nothing otherwise.
    """

    phase: str = "D"
    interval: int = 1
    inputs: tuple[str, ...] = ("real",)
    replays_critic: bool = False
    schedulable: tuple[str, ...] = ()

    def penalty(self, ctx: PhaseContext) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Augment:
    """A differentiable augmentation applied to real and fake images before D, in both phases.

    ``observe(real_logits)``: called in every D phase with D's logits on the augmented reals; returns the
    statistics the augment wants (ADA: the mean sign). With ``needs_stats`` the engine averages the iteration's
    statistics over ranks and passes them to ``update(step, stats)``, so ``p`` stays identical on every rank.
    ``log_stats()`` goes to log.jsonl and the tracker; ``p`` and other state go through ``state_dict``.
    """

    needs_stats: bool = False
    schedulable: tuple[str, ...] = ()

    def observe(self, real_logits: torch.Tensor) -> Stats:
        return {}

    def log_stats(self) -> dict[str, float]:
        return {}

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


class Extractor:
    """Images -> features for metrics (FID, KID, precision/recall, IS). Called with images ``[B, C, H, W]`` in
    [-1, 1] at any resolution and 1 or 3 channels (it resizes and normalises the way its network expects) and
    returns ``{"features": [B, D]}``, plus ``"logits": [B, K]`` when ``has_logits``. Deterministic, eval mode.

    ``name`` and ``checksum`` (sha256 of the weights, or ``random-init:...``) are written next to every result, so
    a number always says which network produced it. ``to(device)`` moves the network. An extractor never
    downloads: missing weights are one error naming what to install or where to put the file.
    """

    name: str
    checksum: str
    has_logits: bool = False

    def to(self, device) -> Extractor:
        return self

    def prepare(self, data: ExtractorData) -> None:
        """Optional: fit the network to the evaluated dataset before any features are taken (a classifier trained
        on the dataset's own labelled reals). Called on every rank, the main process first: it does the work and
        caches the result under ``data.cache_dir``; the other ranks then load it. Deterministic, so a rank that
        cannot see the cache (a node-local disk) computes the same network. ``checksum`` is final afterwards."""

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@dataclass
class ExtractorData:
    """What ``Extractor.prepare`` may read: the real shards (each sample may carry ``cls``), the resolution and
    channels the generator produces, a writable cache directory and a one-line logger."""

    urls: list[str]
    resolution: int
    channels: int
    cache_dir: Path
    log: Callable[[str], None] = print


class StyleExtractor:
    """Images -> named feature maps for style transfer. ``layer_names``: every layer it can return, shallow to
    deep (a recipe naming another is refused before the run, with this list). Called with images
    ``[B, 1|3, H, W]`` in about [-1, 1] and the layers wanted, it returns ``{layer: [B, C_l, H_l, W_l]}``,
    differentiable with respect to the images (the optimised image is trained through it), its own weights
    frozen. Deterministic; weights from a local file or an installed package, never a download."""

    name: str
    checksum: str
    layer_names: tuple[str, ...] = ()

    def to(self, device) -> StyleExtractor:
        return self

    def __call__(self, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class StyleLoss:
    """One term of a style-transfer objective. ``layers``: the extractor layers it reads (empty: it looks at the
    image only). ``targets(content, style)`` gets the feature maps of the content and style images (dicts by
    layer) once, before optimisation, and returns what it compares against (detached tensors); ``__call__(image,
    features, targets)`` returns ``(loss, stats)`` for the optimised image. Stateless: targets are recomputed
    from the images on resume, so nothing of a term is checkpointed."""

    layers: tuple[str, ...] = ()

    def targets(self, content: dict[str, torch.Tensor], style: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def __call__(self, image: torch.Tensor, features: dict[str, torch.Tensor],
                 targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError


class StyleNetwork:
    """The image-transform network of a fast stylizer (Johnson et al. 2016), trained once per style and then applied
    in one forward pass. ``build()`` returns a fresh ``nn.Module`` (the task seeds the RNG first, so every rank
    builds the same weights) mapping images ``[B, 3, H, W]`` in [-1, 1] to stylised images of the same shape in
    [-1, 1], for any H and W; each image independent of the others in its batch (no batch statistics), the same
    in train and eval mode. Its weights are checkpointed like any module's."""

    def build(self) -> nn.Module:
        raise NotImplementedError
