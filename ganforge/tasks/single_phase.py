"""What a task of one trained module, one optimizer and one phase shares (the Gatys image, the fast stylizer's
network): the step's plan, the lr schedule driven by the engine's schedule, logging and the checkpointed state.
A subclass builds its module, optimizer and phase in ``setup`` and hands them to ``attach``."""

from __future__ import annotations

import torch


def fresh(tree):
    """A copy of a state tree in fresh allocations. Tensors read from a checkpoint may sit at any offset of the
    file's buffer, and a BLAS dot product over a differently aligned vector sums in another order: L-BFGS's history
    would then drift from an uninterrupted run's by an ulp per step."""
    if torch.is_tensor(tree):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: fresh(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(fresh(v) for v in tree)
    return tree


class SinglePhaseTask:
    needs_stats = False
    lr_mult = 1.0

    def attach(self, key: str, module, optimizer, phase, stage) -> None:
        """``module`` (unwrapped: what is checkpointed and fingerprinted) is trained by ``optimizer`` in ``phase``;
        ``key`` names both in the checkpoint."""
        self.key, self.trained, self.opt, self.phase = key, module, optimizer, phase
        # the multiplier is the schedule's (stage x lr curve), handed over before each scheduler step
        self.schedulers = {key: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: self.lr_mult)}
        self.set_stage(stage)

    def set_stage(self, stage) -> None:
        self.lr_mult = stage.lr_mult

    def plan(self, step: int, stats: dict) -> list:
        return [self.phase]

    def end_step(self, kimg: float, next_stage) -> None:
        self.lr_mult = next_stage.lr_mult
        for s in self.schedulers.values():
            s.step()

    def observe(self, step: int, stats: dict) -> None:
        pass

    def hooks(self) -> list:
        return []

    def log_stats(self) -> dict:
        return {"lr": self.opt.param_groups[0]["lr"]}

    def state_dict(self) -> dict:
        return {"modules": {self.key: self.trained.state_dict()}, "optimizers": {self.key: self.opt.state_dict()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.trained.load_state_dict(state["modules"][self.key])
        self.opt.load_state_dict(fresh(state["optimizers"][self.key]))
        for n, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][n])

    def networks(self) -> list:
        """Modules whose weights must agree across ranks (and be finite) before a checkpoint is published."""
        return [self.trained]
