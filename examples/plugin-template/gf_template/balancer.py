"""``template_every_other``: G trains every iteration, D every ``d_every``-th one."""

from __future__ import annotations

from ganforge.api import Balancer
from ganforge.registry import register


@register("balancer", "template_every_other")
class TemplateEveryOther(Balancer):
    """G every iteration, D only every ``d_every``-th iteration (template; 2 = every other), which holds back a
    discriminator that learns faster than its generator."""

    api_version = 1

    def __init__(self, d_every: int = 2):
        if d_every < 1:
            raise ValueError(f"d_every must be >= 1, got {d_every}")
        self.d_every = d_every
        self.d_skipped = 0  # D steps left out so far: logged, and checkpointed so a resumed run counts on

    def plan(self, step: int, stats: dict[str, float]) -> list[str]:
        # A function of the step alone: every rank reaches the same plan without any communication.
        if step % self.d_every == 0:
            return ["D", "G"]
        self.d_skipped += 1
        return ["G"]

    def log_stats(self) -> dict[str, float]:
        return {"d_skipped": float(self.d_skipped)}

    # Checkpointed as JSON inside the run's checkpoint: numbers, strings, lists, dicts (and tensors) only.
    def state_dict(self) -> dict:
        return {"d_skipped": self.d_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.d_skipped = int(state["d_skipped"])
