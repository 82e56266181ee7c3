"""Hooks: things the loop does every N steps or every N kimg (log, sample, checkpoint, evaluate, stage change).

A hook is data: a name, an interval and a function. The loop asks each hook whether it is due after every
iteration, in list order; a plugin or an application appends its own. Dueness is a pure function of the
counters (step, kimg before/after the iteration), so every rank agrees without communicating — a hook that
runs a collective (checkpoint, reduced statistics) therefore runs on all ranks at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Hook:
    name: str
    fn: Callable[[], str | None]  # may return a stop reason ("stopped") to end the run after this step
    every_steps: int | None = None
    every_kimg: float | None = None

    def due(self, step: int, kimg_before: float, kimg_after: float) -> bool:
        if self.every_steps is not None and step % self.every_steps == 0:
            return True
        if self.every_kimg is not None:
            # crossing a multiple of every_kimg during this iteration; epsilon: images are counted as ints, and
            # 0.1 kimg steps accumulated in floats must not miss a boundary by 1e-16
            return math.floor(kimg_after / self.every_kimg + 1e-9) > math.floor(kimg_before / self.every_kimg + 1e-9)
        return False


def run_due(hooks: list[Hook], step: int, kimg_before: float, kimg_after: float) -> str | None:
    reason = None
    for h in hooks:
        if h.due(step, kimg_before, kimg_after):
            reason = h.fn() or reason
    return reason
