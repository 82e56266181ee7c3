"""The plain schedule: n_critic D steps, then one G step, every iteration."""

from __future__ import annotations

from ganforge.api import Balancer
from ganforge.registry import register


@register("balancer", "alternate")
class Alternate(Balancer):
    """n_critic D steps then one G step per iteration (n_critic=1 is the classic alternation)."""

    def __init__(self, n_critic: int = 1):
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        self.n_critic = n_critic

    def plan(self, step, stats):
        return ["D"] * self.n_critic + ["G"]

    def log_stats(self) -> dict[str, float]:
        return {"d_per_g": float(self.n_critic)}
