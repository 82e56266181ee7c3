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

# With ``early``, a hook is also due at these fractions of its first interval: a growing interval (every/8,
# every/4, every/2, then every), so a new user sees progress within seconds instead of at step 500.
EARLY_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)


def early_steps(every: int) -> set[int]:
    """The extra steps of an ``early`` hook with interval ``every`` (500 -> {62, 125, 250}; none below 2)."""
    return {int(every * f) for f in EARLY_FRACTIONS} - {0}


def _crossed(mark: float, kimg_before: float, kimg_after: float) -> int:
    # multiples of ``mark`` reached so far; epsilon: images are counted as ints, and 0.1 kimg steps accumulated
    # in floats must not miss a boundary by 1e-16
    return math.floor(kimg_after / mark + 1e-9) - math.floor(kimg_before / mark + 1e-9)


@dataclass
class Hook:
    name: str
    fn: Callable[[], str | None]  # may return a stop reason ("stopped") to end the run after this step
    every_steps: int | None = None
    every_kimg: float | None = None
    early: bool = False  # also due at EARLY_FRACTIONS of the first interval (steps and/or kimg)

    def due(self, step: int, kimg_before: float, kimg_after: float) -> bool:
        if self.every_steps is not None:
            if step % self.every_steps == 0 or (self.early and step in early_steps(self.every_steps)):
                return True
        if self.every_kimg is not None:
            if _crossed(self.every_kimg, kimg_before, kimg_after) > 0:  # crossing a multiple of every_kimg
                return True
            # the first crossing of each early mark (before < mark <= after), never a later multiple of it
            return self.early and any(
                _crossed(self.every_kimg * f, kimg_before, kimg_after) > 0
                and math.floor(kimg_before / (self.every_kimg * f) + 1e-9) == 0 for f in EARLY_FRACTIONS)
        return False


def run_due(hooks: list[Hook], step: int, kimg_before: float, kimg_after: float) -> str | None:
    reason = None
    for h in hooks:
        if h.due(step, kimg_before, kimg_after):
            reason = h.fn() or reason
    return reason
