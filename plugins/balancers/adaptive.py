"""Adaptive G:D ratio: more G steps while D is too strong, more D steps while it is too weak, holding the ratio
while D's strength stays inside a band (hysteresis), so the schedule does not flip every iteration."""

from __future__ import annotations

import math
from typing import Literal

from ganforge.api import Balancer
from ganforge.registry import register


@register("balancer", "adaptive")
class AdaptiveRatio(Balancer):
    """Adapts the G:D step ratio from D's accuracy (or the loss gap) with hysteresis: above ``high`` one more G
    step per iteration, below ``low`` one more D step, in between the ratio holds.

    ``signal``: ``accuracy`` = (d_acc_real + d_acc_fake) / 2, D's accuracy on the batch (0.5 = chance);
    ``loss_gap`` = loss_g - loss_d (large when D wins). The signal is smoothed by an exponential moving average
    (``smoothing``) and the ratio moves by at most one step every ``interval`` iterations, between
    ``max_ratio`` D steps per G step and ``max_ratio`` G steps per D step. Every iteration has at least one D
    step, so D's statistics are always fresh; plans depend only on the averaged stats (same on every rank).
    """

    needs_stats = True

    def __init__(self, signal: Literal["accuracy", "loss_gap"] = "accuracy", low: float = 0.6,
                 high: float = 0.8, max_ratio: int = 4, interval: int = 10, smoothing: float = 0.9):
        if signal == "accuracy" and not 0.0 <= low <= 1.0:
            raise ValueError(f"low must be in [0, 1] for signal 'accuracy', got {low}")
        if signal == "accuracy" and not 0.0 <= high <= 1.0:
            raise ValueError(f"high must be in [0, 1] for signal 'accuracy', got {high}")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"need low < high (the hysteresis band), got low={low}, high={high}")
        if max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.signal, self.low, self.high = signal, low, high
        self.max_ratio, self.interval, self.smoothing = max_ratio, interval, smoothing
        # level > 0: 1 D step and 1 + level G steps; level < 0: 1 - level D steps and 1 G step
        self.level = 0
        self.smoothed: float | None = None
        self.seen = 0  # iterations whose stats were folded into `smoothed`
        self.d_steps = self.g_steps = 0

    def measure(self, stats: dict[str, float]) -> float | None:
        if self.signal == "accuracy":
            if "d_acc_real" not in stats or "d_acc_fake" not in stats:
                return None
            return (stats["d_acc_real"] + stats["d_acc_fake"]) / 2
        if "loss_g" not in stats or "loss_d" not in stats:
            return None
        return stats["loss_g"] - stats["loss_d"]

    def ratio(self) -> tuple[int, int]:
        """(D steps, G steps) per iteration at the current level."""
        return (1, 1 + self.level) if self.level >= 0 else (1 - self.level, 1)

    def plan(self, step, stats):
        value = self.measure(stats)
        if value is not None and math.isfinite(value):
            s = self.smoothed
            self.smoothed = value if s is None else self.smoothing * s + (1 - self.smoothing) * value
            self.seen += 1
            if self.seen % self.interval == 0:
                if self.smoothed > self.high:  # D too strong: give G more steps
                    self.level = min(self.level + 1, self.max_ratio - 1)
                elif self.smoothed < self.low:  # D too weak: give D more steps
                    self.level = max(self.level - 1, -(self.max_ratio - 1))
        n_d, n_g = self.ratio()
        self.d_steps += n_d
        self.g_steps += n_g
        return ["D"] * n_d + ["G"] * n_g

    def log_stats(self) -> dict[str, float]:
        n_d, n_g = self.ratio()
        out = {"d_per_g": n_d / n_g, "d_per_g_mean": self.d_steps / max(self.g_steps, 1)}
        if self.smoothed is not None:
            out["balance_signal"] = self.smoothed
        return out

    def state_dict(self) -> dict:
        return {"level": self.level, "smoothed": self.smoothed, "seen": self.seen, "d_steps": self.d_steps,
                "g_steps": self.g_steps}

    def load_state_dict(self, state: dict) -> None:
        self.level, self.smoothed, self.seen = state["level"], state["smoothed"], state["seen"]
        self.d_steps, self.g_steps = state["d_steps"], state["g_steps"]
