"""The recipe of a style-transfer run (``task: style_transfer``): images, extractor, loss terms, optimizer.

It reuses the engine's own sections (log, sample, checkpoint, schedule) and the GAN recipe's checking helpers, so
errors read the same: one line naming the dotted path. Defaults are what ``ganforge stylize`` runs with no
arguments; recipes/style_transfer.yaml spells them out.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from ..config import (
    CheckpointConfig,
    LogConfig,
    RecipeDict,
    SampleConfig,
    _build_dataclass,
    check_common,
    check_plugin_block,
)
from ..engine.schedule import ScheduleConfig
from ..errors import ConfigError

# Layers of the default extractor (random_multiscale): content at the two finest scales keeps edges and layout;
# style at every scale. Gram entries are means over C*H*W, hence tiny: the style weight makes the two terms
# comparable (tuned by eye on the embedded pair, docs/style_transfer.md).
DEFAULT_LOSSES = [
    {"type": "content", "layers": ["k3", "k5"], "weight": 1.0},
    {"type": "gram", "layers": ["k3", "k5", "k7", "k11", "k15", "k23"],
     "layer_weights": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "weight": 1.0e7},
    {"type": "total_variation", "weight": 0.01},
]


@dataclass
class StyleTrainConfig:
    steps: int = 10  # optimisation steps; an L-BFGS step runs optimizer.max_iter iterations
    max_steps: int | None = None  # stop early at this step (checkpointed); the run's length is unchanged
    threads: int | None = None  # torch intra-op threads
    deterministic: bool = False  # deterministic algorithms (bit-identical resume on CPU)
    nonfinite_patience: int = 3
    nonfinite_policy: Literal["stop", "rollback"] = "stop"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    # Read by the engine, fixed here: one image on one device gains nothing from them, and fp16's GradScaler
    # refuses the closure L-BFGS needs.
    mixed_precision: typing.ClassVar[str] = "no"
    compile: typing.ClassVar[bool] = False
    channels_last: typing.ClassVar[bool] = False


@dataclass
class StyleOptimizerConfig:
    type: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float | None = None  # None: 1.0 for L-BFGS (its line search scales the step), 0.02 for Adam
    max_iter: int = 5  # L-BFGS iterations per step (its curvature history carries over between steps)
    history_size: int = 50  # L-BFGS curvature pairs kept

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1.0 if self.type == "lbfgs" else 0.02)


@dataclass
class StyleRecipe(RecipeDict):
    task: Literal["style_transfer"] = "style_transfer"
    name: str = "stylize"
    content: str | None = None  # image file (any size, grey/RGBA converted to RGB); None: the embedded one
    style: str | list[str] | None = None  # one image, or several blended by style_weights; None: the embedded one
    style_weights: list[float] | None = None  # one per style image (normalised to sum 1); None: equal
    size: int = 128  # the output's longer side in pixels (the content's aspect ratio is kept)
    init: Literal["content", "noise"] = "content"
    preserve_colours: bool = False  # the result's luminance with the content's colours (samples and --out)
    # 64 filters per scale rather than the paper's 128: half the arithmetic, and as clearly stylised here
    extractor: dict = field(default_factory=lambda: {"type": "random_multiscale", "filters": 64})
    losses: list[dict] = field(default_factory=lambda: [dict(b) for b in DEFAULT_LOSSES])
    optimizer: StyleOptimizerConfig = field(default_factory=StyleOptimizerConfig)
    seed: int = 0
    runs_dir: str = "runs"
    train: StyleTrainConfig = field(default_factory=StyleTrainConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(every=1, wandb=False))
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(every=4, n=1))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=10, keep=2))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    imports: list[str] = field(default_factory=list)
    metrics: typing.ClassVar[None] = None  # no periodic evaluation: there is no generator to score


def check_style_blocks(recipe, minimums: dict) -> None:
    """What both style tasks (Gatys' and the fast stylizer) check alike: imports and name, the extractor and loss
    blocks, the style images and their weights, the seed, a schedule of lr only, and ``minimums`` (dotted path ->
    (value, lowest allowed)). Each failure is one line naming the field."""
    check_common(recipe)
    recipe.extractor = check_plugin_block("style_extractor", recipe.extractor, "extractor")
    if not recipe.losses:
        raise ConfigError("losses: give at least one loss term (content, gram, total_variation)")
    recipe.losses = [check_plugin_block("style_loss", b, f"losses[{i}]") for i, b in enumerate(recipe.losses)]
    for path, (v, low) in {**minimums, "train.nonfinite_patience": (recipe.train.nonfinite_patience, 1),
                           "checkpoint.keep": (recipe.checkpoint.keep, 1)}.items():
        if v < low:
            raise ConfigError(f"{path}: must be >= {low}, got {v}")
    if recipe.schedule.stages or recipe.schedule.values:
        raise ConfigError("schedule: a style run has one stage and no scheduled values (only schedule.lr)")
    n = len(recipe.style) if isinstance(recipe.style, list) else 1
    if isinstance(recipe.style, list) and not recipe.style:
        raise ConfigError("style: give at least one image (or null for the embedded one)")
    w = recipe.style_weights
    if w is not None and (len(w) != n or any(x < 0 for x in w) or sum(w) <= 0):
        raise ConfigError(f"style_weights: need {n} weight(s) >= 0 (one per style image) with a positive sum, got {w}")
    if recipe.seed < 0 or recipe.seed >= 2**32:
        raise ConfigError(f"seed: must be in [0, 2**32), got {recipe.seed}")


def validate(raw: dict) -> StyleRecipe:
    recipe = _build_dataclass(StyleRecipe, raw, "")
    check_style_blocks(recipe, {"size": (recipe.size, 8), "train.steps": (recipe.train.steps, 1),
                                "optimizer.max_iter": (recipe.optimizer.max_iter, 1),
                                "optimizer.history_size": (recipe.optimizer.history_size, 1)})
    if recipe.optimizer.lr is not None and recipe.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr: must be > 0, got {recipe.optimizer.lr}")
    for name in ("log", "sample", "checkpoint"):
        block = getattr(recipe, name)
        if block.every < 1 or block.every_kimg is not None:
            raise ConfigError(f"{name}.every: a style run counts steps: give every >= 1 (and no every_kimg)")
    return recipe
