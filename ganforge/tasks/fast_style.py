"""The fast stylizer (Johnson et al. 2016) as a task of the engine: a transform network trained on a stream of images.

Each step takes a batch of content images from the run's data stream (the same ``Feed`` a GAN reads: shards split
by rank and worker, resumable to the sample), stylises it with the network, and scores the result with the Gatys
task's own perceptual terms: content against the network's *input* (per batch), Gram matrices against the style
image(s), total variation. One phase, Adam, no discriminator; the network is prepared (DDP) like a GAN's G, so a
multi-process run averages gradients and every rank ends with the same weights. Progress is counted in content
images (kimg), as for a GAN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import registry
from ..build import image_feed, prepare_source
from ..engine.phases import Phase
from ..engine.schedule import Schedule
from ..errors import DataError
from .gan import make_optimizer
from .single_phase import SinglePhaseTask
from .style import blend, build_terms, score, style_images
from .style_images import embedded_content, to_tensor


@dataclass
class FastStyleComponents:
    recipe: object
    network: object  # style_network plugin: builds the transform network
    extractor: object
    terms: list
    styles: list  # [1, 3, H, W] each
    style_weights: list
    source: object  # dataset plugin: the content images
    arch = None  # no generator for applications that score one (lab, periodic evaluation)
    memory_format = torch.contiguous_format
    # The trained weights mean this network, this style, seen through this extractor, on these images.
    identity = ("network", "style", "style_size", "extractor", "data.source")
    progress_unit = ("kimg", 1.0)

    def make_task(self):
        return FastStyleTask(self)

    def schedule(self, world_size: int) -> Schedule:
        r = self.recipe
        return Schedule(r.schedule, total_kimg=r.train.kimg, resolution=r.size, batch_size=r.train.batch_size,
                        world_size=world_size)

    def prepare_data(self, accelerator) -> None:
        prepare_source(self.source, accelerator)
        direct = self.source.batches(batch_size=1, seed=0, rank=0, world_size=1, start_batch=0)
        if direct is not None:  # sources of points (the lab's mixtures) instead of image shards
            shape = tuple(next(iter(direct))["image"].shape)
            if len(shape) != 4 or shape[1] != 3:
                raise DataError(f"data.source: {self.recipe.data.source['type']!r} yields batches of shape "
                                f"{list(shape)}, not RGB images [B, 3, H, W]: a stylizer trains on images")

    def make_feed(self, accelerator):
        return image_feed(self.source, self.recipe, accelerator, channels=3)

    def provenance(self) -> dict[str, str]:
        r = self.recipe
        blocks = [("network", "style_network", r.network), ("extractor", "style_extractor", r.extractor),
                  ("data.source", "dataset", r.data.source),
                  *((f"losses[{i}]", "style_loss", b) for i, b in enumerate(r.losses))]
        return {path: f"{b['type']}: {registry.get(kind, b['type']).source}" for path, kind, b in blocks}


def build(recipe, preflight_check: bool = True) -> FastStyleComponents:
    extractor, terms = build_terms(recipe)
    network = registry.build("style_network", recipe.network, "network")
    source = registry.build("dataset", recipe.data.source, "data.source")
    styles, weights = style_images(recipe, recipe.style_size or recipe.size)
    return FastStyleComponents(recipe, network, extractor, terms, styles, weights, source)


class FastStyleTask(SinglePhaseTask):
    def __init__(self, c: FastStyleComponents):
        self.c, self.recipe = c, c.recipe
        self._inputs = None  # the sample grid's fixed content images (main process, on first render)

    # ---- build (once per run) ---------------------------------------------------------------------------------
    def setup(self, accelerator, feed, stage, memory_format=torch.contiguous_format) -> None:
        r, c, acc = self.recipe, self.c, accelerator
        self.acc, self.feed, self.extractor = acc, feed, c.extractor.to(acc.device)
        torch.manual_seed(r.seed)  # every rank builds the same initial weights
        net = c.network.build()
        opt = make_optimizer(net.parameters(), r.optimizer, 1.0)
        self.net, opt = acc.prepare(net, opt)  # DDP when several processes: gradients averaged
        self.net_raw = acc.unwrap_model(self.net, keep_torch_compile=False)
        wanted = {n for t in c.terms for n in t.layers}
        self.layers = [n for n in self.extractor.layer_names if n in wanted]  # one extractor pass for all terms
        with torch.no_grad():
            self.style_feats = [self.extractor(s.to(acc.device), self.layers) for s in c.styles]
        self.attach("net", self.net_raw, opt, Phase("stylize", [self.net], opt, self._loss), stage)

    def _loss(self, i: int):
        x = self.feed.next()
        y = self.net(x)
        with torch.no_grad():  # the content targets: this batch's own features (the network must keep them)
            fc = self.extractor(x, self.layers)
        # Targets per batch through the terms' own `targets` (content from the input, Gram from the style), so
        # any style_loss plugin works here exactly as in a Gatys run.
        targets = [blend([t.targets(fc, fs) for fs in self.style_feats], self.c.style_weights) for t in self.c.terms]
        return score(self.c.terms, targets, y, self.extractor(y, self.layers))

    def images_this_step(self) -> int:
        return self.feed.batch_size * self.acc.num_processes  # content images, all ranks

    # ---- samples ----------------------------------------------------------------------------------------------
    def sample_inputs(self) -> torch.Tensor:
        """The embedded scene and the first ``sample.n - 1`` images of the data (shard order), at ``size``: the
        same every time, so grids of one run compare step to step."""
        if self._inputs is None:
            r, size = self.recipe, self.recipe.size
            images = [to_tensor(embedded_content(), size)]
            if r.sample.n > 1:
                images.append(first_images(self.c.source, r.sample.n - 1, size))
            self._inputs = torch.cat(images)
        return self._inputs

    def render(self) -> torch.Tensor:
        """One image ``[1, 3, H, W]`` in [-1, 1]: the sample inputs in the top row, their stylised versions below."""
        from torchvision.utils import make_grid

        x = self.sample_inputs().to(self.acc.device)
        with torch.no_grad():
            y = self.net_raw(x).clamp(-1, 1)
        return make_grid(torch.cat([x, y]).cpu(), nrow=len(x), padding=2, pad_value=-1.0)[None]


def first_images(source, n: int, size: int) -> torch.Tensor:
    """The first ``n`` images of a dataset source at ``size``, read in shard order (no shuffle, no RNG touched)."""
    direct = source.batches(batch_size=n, seed=0, rank=0, world_size=1, start_batch=0)
    if direct is not None:
        return next(iter(direct))["image"][:n]
    from ..datatools.epoch import EpochStream

    stream = EpochStream(source.urls()[:1], batch_size=n, resolution=size, channels=3)
    return next(iter(stream))["image"]
