"""Style transfer (Gatys et al.) as a task of the engine: the trained parameter is the image.

``build`` turns a style recipe into components (extractor, loss terms, content and style images), once, checking
every layer name against the extractor before any run directory exists. ``StyleTransferTask`` is one phase, no
discriminator, no data stream, no EMA: the loop runs it exactly as it runs a GAN (hooks, log.jsonl, samples,
checkpoint and resume), and L-BFGS gets the closure it needs through the phase (``Phase.closure``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import registry
from ..build import world_size_from_env
from ..engine.feed import NoFeed
from ..engine.phases import Phase
from ..engine.schedule import Schedule
from ..errors import ConfigError
from .single_phase import SinglePhaseTask
from .style_images import image as load_image
from .style_images import keep_colours


@dataclass
class StyleComponents:
    recipe: object
    extractor: object
    terms: list
    content: torch.Tensor  # [1, 3, H, W] in [-1, 1]
    styles: list  # [1, 3, H, W] each; their targets are blended by style_weights (summing to 1)
    style_weights: list
    # What applications that score a generator read (lab, periodic evaluation): a style run has neither.
    arch = None
    source = None
    memory_format = torch.contiguous_format
    # Changing any of these makes the checkpointed image (and optimizer state) mean something else.
    identity = ("content", "style", "size", "init", "extractor", "optimizer.type")
    progress_unit = ("steps", 1000.0)  # one step counts as one image (see schedule)

    def make_task(self):
        return StyleTransferTask(self)

    def schedule(self, world_size: int) -> Schedule:
        # Progress is counted in optimisation steps: each step "shows" one image, so the length in the engine's
        # unit (kimg) is steps / 1000 and step n is at exactly n / 1000 kimg.
        r = self.recipe
        return Schedule(r.schedule, total_kimg=r.train.steps / 1000, resolution=max(self.content.shape[-2:]),
                        batch_size=1, world_size=world_size)

    def prepare_data(self, accelerator) -> None:
        pass  # the images were read (or drawn) while building

    def make_feed(self, accelerator) -> NoFeed:
        return NoFeed()

    def provenance(self) -> dict[str, str]:
        r = self.recipe
        blocks = [("extractor", "style_extractor", r.extractor),
                  *((f"losses[{i}]", "style_loss", b) for i, b in enumerate(r.losses))]
        return {path: f"{b['type']}: {registry.get(kind, b['type']).source}" for path, kind, b in blocks}


def build_terms(recipe) -> tuple[object, list]:
    """The extractor and loss terms of a style recipe (Gatys' or the fast stylizer's), every layer a term names
    checked against the extractor's."""
    extractor = registry.build("style_extractor", recipe.extractor, "extractor")
    terms = [registry.build("style_loss", b, f"losses[{i}]") for i, b in enumerate(recipe.losses)]
    valid = tuple(extractor.layer_names)
    for i, term in enumerate(terms):
        for name in term.layers:
            if name not in valid:
                raise ConfigError(f"losses[{i}].layers: unknown layer {name!r} for style_extractor "
                                  f"{recipe.extractor['type']!r} (valid: {', '.join(valid)})")
    return extractor, terms


def style_images(recipe, size: int) -> tuple[list, list[float]]:
    """The style image(s) at ``size`` and their weights, normalised to sum 1."""
    paths = recipe.style if isinstance(recipe.style, list) else [recipe.style]
    styles = [load_image(p, size, "style") for p in paths]
    weights = recipe.style_weights or [1.0] * len(styles)
    return styles, [w / sum(weights) for w in weights]


def build(recipe, preflight_check: bool = True) -> StyleComponents:
    if world_size_from_env() > 1:
        # One image, optimised by L-BFGS: there is no batch to split, and N processes would each redo the same
        # run (and on GPUs drift apart by rounding, which the checkpoint's rank check then reports as a bug).
        raise ConfigError("task style_transfer optimises one image and cannot be split over processes: run it in "
                          "one process (the fast stylizer, task fast_style, trains on several)")
    extractor, terms = build_terms(recipe)
    content = load_image(recipe.content, recipe.size, "content")
    styles, weights = style_images(recipe, recipe.size)
    return StyleComponents(recipe, extractor, terms, content, styles, weights)


def blend(targets: list[dict], weights: list[float]) -> dict:
    """Several styles: each term's targets averaged by weight (Gram matrices averaged, as in jcjohnson's
    neural-style); with one style the weight is 1 and the targets are exactly the term's."""
    if len(targets) == 1:
        return targets[0]
    return {k: sum(w * t[k] for w, t in zip(weights, targets)) for k in targets[0]}


def score(terms: list, targets: list[dict], image: torch.Tensor, feats: dict) -> tuple[torch.Tensor, dict]:
    """The summed loss of every term and their statistics (plus ``loss_total``), for the optimised image (Gatys)
    or a batch of stylised images (the fast stylizer)."""
    total, stats = 0.0, {}
    for term, target in zip(terms, targets):
        loss, s = term(image, feats, target)
        total = total + loss
        for k, v in s.items():  # two terms of one type (two style layers sets) add up under one name
            stats[k] = stats[k] + v if k in stats else v
    stats["loss_total"] = total.detach()
    return total, stats


class ImageParam(nn.Module):
    """The optimised image as the one parameter of a module, so checkpoints, fingerprints and the phase runner
    handle it like any network's weights."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        # contiguous: gradients take the parameter's layout, and L-BFGS flattens them with .view()
        self.image = nn.Parameter(init.clone(memory_format=torch.contiguous_format))


class StyleTransferTask(SinglePhaseTask):
    def __init__(self, c: StyleComponents):
        self.c, self.recipe = c, c.recipe

    # ---- build (once per run) ---------------------------------------------------------------------------------
    def setup(self, accelerator, feed, stage, memory_format=torch.contiguous_format) -> None:
        r, c, dev = self.recipe, self.c, accelerator.device
        self.acc, self.extractor = accelerator, c.extractor.to(dev)
        wanted = {n for t in c.terms for n in t.layers}
        self.layers = [n for n in self.extractor.layer_names if n in wanted]  # one extractor pass for all terms
        with torch.no_grad():
            fc = self.extractor(c.content.to(dev), self.layers)
            fs = [self.extractor(s.to(dev), self.layers) for s in c.styles]
        self.targets = [blend([t.targets(fc, f) for f in fs], c.style_weights) for t in c.terms]
        if r.init == "content":
            init = c.content
        else:  # white noise of the content's size, from the run's seed without touching the global stream
            init = torch.randn(c.content.shape, generator=torch.Generator().manual_seed(r.seed)).mul_(0.5)
        self.module = ImageParam(init).to(dev)
        o = r.optimizer
        if o.type == "lbfgs":
            opt = torch.optim.LBFGS(self.module.parameters(), lr=o.learning_rate, max_iter=o.max_iter,
                                    history_size=o.history_size, line_search_fn="strong_wolfe")
        else:
            opt = torch.optim.Adam(self.module.parameters(), lr=o.learning_rate)
        # closure: L-BFGS evaluates the loss several times per step (line search); Adam steps once
        phase = Phase("stylize", [self.module], opt, self._loss, closure=o.type == "lbfgs")
        # the checkpoint holds the image and the whole L-BFGS state (curvature history, last direction and step)
        self.attach("image", self.module, opt, phase, stage)

    def _loss(self, i: int):
        img = self.module.image
        return score(self.c.terms, self.targets, img, self.extractor(img, self.layers))

    # ---- the step -------------------------------------------------------------------------------------------
    def images_this_step(self) -> int:
        return 1  # progress is counted in steps (see StyleComponents.schedule)

    def end_step(self, kimg: float, next_stage) -> None:
        with torch.no_grad():
            self.module.image.clamp_(-1, 1)  # keep it a displayable image (as Gatys' implementations do)
        super().end_step(kimg, next_stage)

    # ---- samples ----------------------------------------------------------------------------------------------
    def render(self) -> torch.Tensor:
        """The current image ``[1, 3, H, W]`` in [-1, 1]: the run's sample (and ``ganforge stylize --out``), with
        the content's colours when ``preserve_colours`` (the optimised image itself keeps the style's)."""
        img = self.module.image.detach().clamp(-1, 1)
        return keep_colours(img, self.c.content) if self.recipe.preserve_colours else img
