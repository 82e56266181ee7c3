"""Skip D while it is winning: a D whose loss has fallen below a threshold sits out (G trains alone), for at most
``max_skips`` iterations in a row, then trains again."""

from __future__ import annotations

import math

from ganforge.api import Balancer
from ganforge.registry import register


@register("balancer", "skip_d")
class SkipD(Balancer):
    """Skips D's step while its last measured loss is below ``threshold`` (at most ``max_skips`` in a row);
    otherwise ``n_critic`` D steps then one G step.

    The decision at iteration t reads ``stats[stat]`` from iteration t-1, averaged over ranks by the engine, so
    every rank plans the same. A skipped D is not re-measured — its weights do not change, so its last loss
    stands (the balancer keeps it in its checkpointed state) — which is why the cap matters: after
    ``max_skips`` skips D steps once and its loss is fresh again.
    """

    needs_stats = True

    def __init__(self, threshold: float = 0.3, max_skips: int = 5, n_critic: int = 1, stat: str = "loss_d"):
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0 (a loss value), got {threshold}")
        if max_skips < 1:
            raise ValueError(f"max_skips must be >= 1, got {max_skips}")
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        self.threshold, self.max_skips, self.n_critic, self.stat = threshold, max_skips, n_critic, stat
        self.streak = 0  # consecutive iterations skipped so far
        self.skipped = 0  # D steps skipped since the start of the run
        self.d_steps = self.g_steps = 0
        self.last: float | None = None  # D's loss when it last trained (None until it has)

    def should_skip(self, stats: dict[str, float]) -> bool:
        if self.stat in stats:
            self.last = float(stats[self.stat])
        # None on the first iteration (no D step yet): D trains
        return self.last is not None and self.last < self.threshold and self.streak < self.max_skips

    def plan(self, step, stats):
        if self.should_skip(stats):
            self.streak += 1
            self.skipped += self.n_critic
            phases = ["G"]
        else:
            self.streak = 0
            phases = ["D"] * self.n_critic + ["G"]
        self.d_steps += len(phases) - 1
        self.g_steps += 1
        return phases

    def log_stats(self) -> dict[str, float]:
        return {"d_skipped": float(self.skipped), "d_skip_streak": float(self.streak),
                "d_per_g_mean": self.d_steps / max(self.g_steps, 1)}

    def state_dict(self) -> dict:
        return {"streak": self.streak, "skipped": self.skipped, "d_steps": self.d_steps, "g_steps": self.g_steps,
                "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.skipped, self.last = state["streak"], state["skipped"], state["last"]
        self.d_steps, self.g_steps = state["d_steps"], state["g_steps"]
