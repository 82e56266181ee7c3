"""The recipe of a fast-stylizer run (``task: fast_style``): a transform network trained on a stream of images.

It shares the Gatys recipe's style blocks (style images and weights, extractor, loss terms: checked by the same
``check_style_blocks``) and the GAN recipe's data stream (``data:``, the same ``DataConfig``), and counts progress
like a GAN run: thousands of content images over all processes (``train.kimg``), so log/sample/checkpoint may be
given in steps or in kimg. Defaults are the CPU-sized run recipes/fast_style.yaml spells out.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from ..config import (
    CheckpointConfig,
    DataConfig,
    LogConfig,
    OptimConfig,
    RecipeDict,
    SampleConfig,
    _build_dataclass,
    check_intervals,
    check_plugin_block,
)
from ..engine.schedule import ScheduleConfig
from ..errors import ConfigError
from .style_recipe import DEFAULT_LOSSES, check_style_blocks


@dataclass
class FastStyleTrainConfig:
    batch_size: int = 4  # content images per process and step
    kimg: float = 1.0  # the run's length: thousands of content images over all processes
    max_steps: int | None = None  # stop early at this step (checkpointed); the run's length is unchanged
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    threads: int | None = None
    deterministic: bool = False  # deterministic algorithms (bit-identical resume on CPU)
    nonfinite_patience: int = 3
    nonfinite_policy: Literal["stop", "rollback"] = "stop"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    compile: typing.ClassVar[bool] = False  # read by the engine; not offered (untested for this task)
    channels_last: typing.ClassVar[bool] = False


def _data() -> DataConfig:
    # The embedded digits at the training size: no download, and shards written once per machine.
    return DataConfig(source={"type": "digits", "resolution": 64}, workers=1)


@dataclass
class FastStyleRecipe(RecipeDict):
    task: Literal["fast_style"] = "fast_style"
    name: str = "fast_style"
    style: str | list[str] | None = None  # one image, or several blended by style_weights; None: the embedded one
    style_weights: list[float] | None = None
    style_size: int | None = None  # longer side of the style image(s) when their targets are taken; None: size
    size: int = 64  # training images are streamed at size x size (resized, centre-cropped)
    network: dict = field(default_factory=lambda: {"type": "transform_net", "width": 16, "res_blocks": 3})
    extractor: dict = field(default_factory=lambda: {"type": "random_multiscale", "filters": 32})
    losses: list[dict] = field(default_factory=lambda: [dict(b) for b in DEFAULT_LOSSES])
    # Adam as in Johnson et al. (lr 1e-3); betas (0.9, 0.999), not the GAN recipe's (0.5, 0.999)
    optimizer: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=(0.9, 0.999)))
    data: DataConfig = field(default_factory=_data)
    seed: int = 0
    runs_dir: str = "runs"
    train: FastStyleTrainConfig = field(default_factory=FastStyleTrainConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(every=10, wandb=False))
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(every=100, n=6))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=100, keep=2))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    imports: list[str] = field(default_factory=list)
    metrics: typing.ClassVar[None] = None  # no periodic evaluation: there is no generator to score

    def data_resolution(self) -> int:
        """The size the data stream is read at (``ganforge run --data FOLDER`` packs the folder at it)."""
        return self.size


def validate(raw: dict) -> FastStyleRecipe:
    recipe = _build_dataclass(FastStyleRecipe, raw, "")
    t, o = recipe.train, recipe.optimizer
    check_style_blocks(recipe, {"size": (recipe.size, 8), "style_size": (recipe.style_size or 8, 8),
                                "train.batch_size": (t.batch_size, 1), "sample.n": (recipe.sample.n, 1),
                                "data.workers": (recipe.data.workers, 0), "train.max_rollbacks": (t.max_rollbacks, 0)})
    recipe.network = check_plugin_block("style_network", recipe.network, "network")
    recipe.data.source = check_plugin_block("dataset", recipe.data.source, "data.source")
    positive = {"train.kimg": t.kimg, "optimizer.lr": o.lr, "optimizer.eps": o.eps}
    for path, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{path}: must be > 0, got {v}")
    if not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optimizer.betas: each must be in [0, 1), got {list(o.betas)}")
    if not 0 < t.rollback_lr_factor <= 1:
        raise ConfigError(f"train.rollback_lr_factor: must be in (0, 1], got {t.rollback_lr_factor}")
    check_intervals(recipe)
    return recipe
