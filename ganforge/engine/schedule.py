"""The training schedule: kimg -> stage (resolution, batch per process, fade-in alpha, lr multiplier, scalars).

The loop asks ``Schedule.at(kimg)`` once per iteration and never reads ``recipe.train`` for these. Everything here
is a pure function of kimg and the recipe, so a resumed run computes exactly the values an uninterrupted run
would; the only state (the stage index the data stream was built for) lives in the loop's checkpointed counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError


@dataclass
class StageConfig:
    """One stage of progressive growing (ProGAN): trains at ``resolution`` for ``kimg`` (the last stage may omit
    it: until the end of the run), fading the new layers in linearly over its first ``fade_kimg``."""

    resolution: int
    kimg: float | None = None
    fade_kimg: float = 0.0
    global_batch_size: int | None = None  # all processes together; None: train.batch_size x processes
    lr_mult: float = 1.0  # multiplies every optimizer's scheduled lr during this stage


@dataclass
class CurveConfig:
    """A multiplier (lr) or value (``schedule.values``) over kimg. ``constant``, ``linear`` and ``cosine`` go
    from ``start`` to ``end`` between ``start_kimg`` and ``end_kimg`` (default: the whole run); ``step``
    multiplies ``start`` by ``gamma`` every ``step_kimg``. ``warmup_kimg`` ramps linearly from 0 first."""

    type: Literal["constant", "linear", "cosine", "step"] = "constant"
    start: float = 1.0
    end: float = 0.0
    start_kimg: float = 0.0
    end_kimg: float | None = None
    step_kimg: float = 0.0
    gamma: float = 0.1
    warmup_kimg: float = 0.0


@dataclass
class ScheduleConfig:
    stages: list[StageConfig] = field(default_factory=list)
    lr: CurveConfig = field(default_factory=CurveConfig)  # a multiplier of every optimizer's base lr
    # Scheduled scalars by path: "ema_kimg" (the engine's EMA half-life) or "<block>.<attribute>" of a plugin
    # that lists the attribute in ``schedulable`` ("regularizers[0].gamma", "augment.p").
    values: dict[str, CurveConfig] = field(default_factory=dict)


def curve(c: CurveConfig, kimg: float, total_kimg: float) -> float:
    end_kimg = total_kimg if c.end_kimg is None else c.end_kimg
    if c.type == "constant":
        v = c.start
    elif c.type == "step":
        v = c.start * c.gamma ** math.floor(max(kimg - c.start_kimg, 0.0) / c.step_kimg)
    else:
        t = min(max((kimg - c.start_kimg) / max(end_kimg - c.start_kimg, 1e-12), 0.0), 1.0)
        w = t if c.type == "linear" else 0.5 * (1 - math.cos(math.pi * t))
        v = c.start + (c.end - c.start) * w
    if c.warmup_kimg > 0 and kimg < c.warmup_kimg:
        v *= kimg / c.warmup_kimg
    return v


@dataclass(frozen=True)
class Stage:
    index: int
    resolution: int
    batch_size: int  # per process
    alpha: float  # fade-in of the newest layers: 0 -> 1 during the first fade_kimg of the stage, then 1
    lr_mult: float  # stage multiplier x lr curve
    values: dict  # scheduled scalars at this kimg


class Schedule:
    def __init__(self, cfg: ScheduleConfig, *, total_kimg: float, resolution: int, batch_size: int,
                 world_size: int):
        self.cfg, self.total_kimg = cfg, total_kimg
        stages = cfg.stages or [StageConfig(resolution=resolution)]
        self.starts, t = [], 0.0
        for s in stages:
            self.starts.append(t)
            t += s.kimg if s.kimg is not None else math.inf
        self.stages = stages
        self.batches = [s.global_batch_size // world_size if s.global_batch_size else batch_size for s in stages]

    @property
    def grows(self) -> bool:
        return len({s.resolution for s in self.stages}) > 1

    def stage_index(self, kimg: float) -> int:
        return max(i for i, start in enumerate(self.starts) if start <= kimg)

    def at(self, kimg: float) -> Stage:
        i = self.stage_index(kimg)
        s = self.stages[i]
        into = kimg - self.starts[i]
        alpha = 1.0 if s.fade_kimg <= 0 or i == 0 else min(into / s.fade_kimg, 1.0)
        lr = s.lr_mult * curve(self.cfg.lr, kimg, self.total_kimg)
        values = {k: curve(c, kimg, self.total_kimg) for k, c in self.cfg.values.items()}
        return Stage(i, s.resolution, self.batches[i], alpha, lr, values)


def validate(cfg: ScheduleConfig, *, total_kimg: float, arch_resolutions: list[int], world_size: int,
             arch_name: str) -> None:
    """Every way a schedule can be inconsistent, as one line naming the field (before any run dir exists)."""
    for key, c in [("schedule.lr", cfg.lr), *((f"schedule.values.{k}", c) for k, c in cfg.values.items())]:
        if c.type == "step" and c.step_kimg <= 0:
            raise ConfigError(f"{key}.step_kimg: a step schedule needs step_kimg > 0, got {c.step_kimg}")
        if c.end_kimg is not None and c.end_kimg <= c.start_kimg:
            raise ConfigError(f"{key}.end_kimg: must be > start_kimg ({c.start_kimg}), got {c.end_kimg}")
        if c.warmup_kimg < 0:
            raise ConfigError(f"{key}.warmup_kimg: must be >= 0, got {c.warmup_kimg}")
    if cfg.lr.type != "step" and min(cfg.lr.start, cfg.lr.end if cfg.lr.type != "constant" else 1.0) < 0:
        raise ConfigError("schedule.lr: lr multipliers must be >= 0")
    if not cfg.stages:
        return
    if len(arch_resolutions) < 2 and len(cfg.stages) > 1:
        raise ConfigError(f"schedule.stages: architecture {arch_name!r} cannot grow (it trains only at "
                          f"{arch_resolutions}); remove the stages or use a growing architecture such as 'progan'")
    start, prev = 0.0, 0
    for i, s in enumerate(cfg.stages):
        key = f"schedule.stages[{i}]"
        r = s.resolution
        if r < 1 or r & (r - 1):
            raise ConfigError(f"{key}.resolution: must be a power of two, got {r}")
        if r not in arch_resolutions:
            raise ConfigError(f"{key}.resolution: architecture {arch_name!r} has no stage at {r} "
                              f"(its stages: {arch_resolutions})")
        if r <= prev:
            raise ConfigError(f"{key}.resolution: stages must grow, got {r} after {prev}")
        prev = r
        last = i == len(cfg.stages) - 1
        if s.kimg is None and not last:
            raise ConfigError(f"{key}.kimg: only the last stage may omit its length")
        if s.kimg is not None and s.kimg <= 0:
            raise ConfigError(f"{key}.kimg: must be > 0, got {s.kimg}")
        if s.fade_kimg < 0 or (s.kimg is not None and s.fade_kimg > s.kimg):
            raise ConfigError(f"{key}.fade_kimg: must be in [0, kimg={s.kimg}], got {s.fade_kimg}")
        if s.global_batch_size is not None and (s.global_batch_size < 1 or s.global_batch_size % world_size):
            raise ConfigError(f"{key}.global_batch_size: {s.global_batch_size} is not divisible by the "
                              f"{world_size} processes")
        if s.lr_mult < 0:
            raise ConfigError(f"{key}.lr_mult: must be >= 0, got {s.lr_mult}")
        if start >= total_kimg:
            raise ConfigError(f"{key}: starts at {start:g} kimg, after the end of the run (train.kimg="
                              f"{total_kimg:g})")
        if s.kimg is not None and start + s.kimg > total_kimg + 1e-9:
            raise ConfigError(f"{key}.kimg: the stage ends at {start + s.kimg:g} kimg, after the end of the run "
                              f"(train.kimg={total_kimg:g})")
        start += s.kimg or 0.0
    if cfg.stages[-1].resolution != max(arch_resolutions):
        raise ConfigError(f"schedule.stages[{len(cfg.stages) - 1}].resolution: the last stage must reach the "
                          f"model's resolution {max(arch_resolutions)}, got {cfg.stages[-1].resolution}")
