"""Recipe -> components, exactly once, and the pre-flight that proves they fit together.

``ganforge run``, the lab, bench/ and tests all call ``build``: every plugin is constructed here and nowhere else,
and everything a recipe can get wrong (an option value, a schedule, a regularizer the architecture cannot serve,
an augmentation of point data) fails here, as one line naming the blocks, before any run directory exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from . import registry
from .api import PhaseContext, tree_map
from .config import Recipe
from .engine import schedule as schedule_mod
from .errors import ConfigError, DataError, GanforgeError
from .tasks.penalties import check_inputs, d_context
from .tasks.targets import BETA2_PATHS, ENGINE_VALUES, resolve_target


@dataclass
class Components:
    recipe: Recipe
    arch: object
    source: object
    loss: object
    balancer: object
    augment: object | None
    regularizers: list = field(default_factory=list)

    def provenance(self) -> dict[str, str]:
        """Block path -> "name: module:qualname [distribution version]" of every plugin the recipe uses; a
        checkpoint records it, and resuming with a different one warns."""
        r = self.recipe
        blocks = [("model", "architecture", r.model), ("loss", "loss", r.loss), ("balancer", "balancer", r.balancer),
                  ("augment", "augment", r.augment), ("data.source", "dataset", r.data.source),
                  *((f"regularizers[{i}]", "regularizer", b) for i, b in enumerate(r.regularizers))]
        return {path: f"{b['type']}: {registry.get(kind, b['type']).source}" for path, kind, b in blocks if b}

    # Blocks whose change makes an existing checkpoint meaningless: resuming with another one is refused.
    identity = ("model", "data.source")
    progress_unit = ("kimg", 1.0)  # what the progress bar counts, as a multiple of kimg

    def make_task(self):
        # The seam (setup / plan / end_step / render / state_dict) is what the loop knows: a task without a
        # discriminator (tasks/style.py) has components of its own and never touches the loop.
        from .tasks.gan import GANTask

        return GANTask(self, self.recipe)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.recipe.train.channels_last else torch.contiguous_format

    def prepare_data(self, accelerator) -> None:
        prepare_source(self.source, accelerator)

    def make_feed(self, accelerator):
        """The reals D trains on: one stream per schedule stage, split over ranks and workers."""
        return image_feed(self.source, self.recipe, accelerator, self.arch.channels, self.memory_format)

    def stage_resolutions(self) -> list[int]:
        fn = getattr(self.arch, "stage_resolutions", None)
        return list(fn()) if fn is not None else [self.arch.resolution]

    def schedule(self, world_size: int) -> schedule_mod.Schedule:
        r = self.recipe
        return schedule_mod.Schedule(r.schedule, total_kimg=r.train.kimg, resolution=self.arch.resolution,
                                     batch_size=r.train.batch_size, world_size=world_size)


def prepare_source(source, accelerator) -> None:
    """Embedded datasets write shards on first use: the local main process writes, the others wait for it.
    Shared by every task that reads a ``data:`` stream."""
    with accelerator.local_main_process_first():
        source.prepare()
    if source.batches(batch_size=1, seed=0, rank=0, world_size=1, start_batch=0) is None and not source.urls():
        raise DataError("data.source: the dataset produced no shard URLs")  # checked before the run dir exists


def image_feed(source, recipe, accelerator, channels: int, memory_format=torch.contiguous_format):
    """The feed of a recipe's ``data:`` block: one stream per schedule stage, split over ranks and workers."""
    from .engine.feed import Feed

    r, acc = recipe, accelerator
    return Feed(source, channels=channels, seed=r.seed, rank=acc.process_index, world_size=acc.num_processes,
                workers=r.data.workers, xflip=r.data.xflip, shuffle_buffer=r.data.shuffle_buffer, device=acc.device,
                memory_format=memory_format)


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def build(recipe, preflight_check: bool = True):
    """Every plugin of the recipe, built once, by the builder of the recipe's task (ganforge/tasks/__init__.py)."""
    from .tasks import builder

    return builder(recipe.task)(recipe, preflight_check)


def build_gan(recipe: Recipe, preflight_check: bool = True) -> Components:
    c = Components(
        recipe=recipe,
        arch=registry.build("architecture", recipe.model, "model"),
        source=registry.build("dataset", recipe.data.source, "data.source"),
        loss=registry.build("loss", recipe.loss, "loss"),
        balancer=registry.build("balancer", recipe.balancer, "balancer"),
        augment=registry.build("augment", recipe.augment, "augment") if recipe.augment else None,
        regularizers=[registry.build("regularizer", b, f"regularizers[{i}]")
                      for i, b in enumerate(recipe.regularizers)],
    )
    check_inputs(c.regularizers)
    schedule_mod.validate(recipe.schedule, total_kimg=recipe.train.kimg, arch_resolutions=c.stage_resolutions(),
                          world_size=world_size_from_env(), arch_name=recipe.model["type"])
    for path, cv in recipe.schedule.values.items():
        if path not in ENGINE_VALUES:
            resolve_target(c, path)
        ends = (cv.start,) if cv.type in ("constant", "step") else (cv.start, cv.end)
        if path in BETA2_PATHS and not all(0 <= v < 1 for v in ends):
            raise ConfigError(f"schedule.values.{path}: Adam's beta2 must be in [0, 1), got {list(ends)}")
    if recipe.sample.truncation_psi != 1.0 and not getattr(c.arch, "supports_truncation", False):
        raise ConfigError(f"sample.truncation_psi: the generator of architecture {recipe.model['type']!r} does not "
                          "support truncation")
    if preflight_check:
        preflight(c)
    return c


def _plugin_states(c: Components) -> list:
    return [p for p in (c.loss, c.balancer, c.augment, *c.regularizers) if p is not None and hasattr(p, "state_dict")]


def preflight(c: Components) -> None:
    """One tiny D step and G step (batch 2, fresh nets, every regularizer folded in) to catch combinations that
    cannot work. On the meta device: shapes and plugin checks run, no arithmetic, so a 1024² StyleGAN checks in
    seconds without its memory. RNG and plugin state are restored afterwards: the run starts as if it never ran."""
    r = c.recipe
    saved = [(p, p.state_dict()) for p in _plugin_states(c)]
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        G, D = c.arch.build_generator(), c.arch.build_discriminator()
        res = c.stage_resolutions()[0] if r.schedule.stages else c.arch.resolution
        for m in (G, D):
            if hasattr(m, "set_stage"):
                m.set_stage(res, 1.0)
        real = _tiny_real(c, res)
        prep = getattr(c.arch, "prepare_real", None)
        real = prep(real, res, 1.0) if prep is not None else real
        aug = (lambda x: tree_map(c.augment, x)) if c.augment is not None else (lambda x: x)
        step = "model"
        try:
            z = c.arch.sample_latents(2)
            fake = G(z)
            step = "augment"
            real_logits, fake_logits = D(aug(real)), D(aug(fake.detach() if torch.is_tensor(fake) else
                                                          tree_map(torch.Tensor.detach, fake)))
            step = "loss"
            c.loss.d_loss(PhaseContext(D=D, real=real, fake=fake, real_logits=real_logits, fake_logits=fake_logits))
            c.loss.g_loss(PhaseContext(D=D, real=real, fake=fake, real_logits=real_logits, fake_logits=D(aug(fake))))
            for i, reg in enumerate(c.regularizers):
                step = f"regularizers[{i}]"
                reg.penalty(d_context(reg, D, lambda x: D(aug(x)), real, fake, G=G, arch=c.arch) if reg.phase == "D"
                            else PhaseContext(D=D, G=G, arch=c.arch, batch_size=2))
        except GanforgeError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here means the blocks do not fit together
            if "meta" in str(e):  # a data-dependent op (.item(), a branch on a value): cannot be checked here
                return
            raise ConfigError(_misfit(c, step, e)) from None
        finally:
            for p, state in saved:
                p.load_state_dict(state)


def _tiny_real(c: Components, resolution: int):
    with torch.device("cpu"):
        direct = c.source.batches(batch_size=2, seed=0, rank=0, world_size=1, start_batch=0)
        if direct is not None:
            return next(iter(direct))["image"].to("meta")
    return torch.empty(2, c.arch.channels, resolution, resolution)  # image shards decode to this shape


def _misfit(c: Components, step: str, e: Exception) -> str:
    r = c.recipe
    what = {"model": f"model {r.model['type']!r}",
            "augment": f"augment {r.augment['type']!r} with model {r.model['type']!r} and data.source "
                       f"{r.data.source['type']!r}" if r.augment else f"model {r.model['type']!r}",
            "loss": f"loss {r.loss['type']!r} with model {r.model['type']!r}"}
    if step.startswith("regularizers"):
        i = int(step[len("regularizers["):-1])
        what[step] = f"{step} {r.regularizers[i]['type']!r} with model {r.model['type']!r}"
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"{what[step]} do not fit together: {msg}"
