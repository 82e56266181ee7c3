"""Training diagnostics: D accuracy and mean logits, gradient norms, sample diversity — and a watchdog that turns
them into one-line warnings when the run shows the two failures users name: mode collapse and a D that has won.

All values are tensors until the engine averages them over ranks at a log step (no per-step GPU sync).
"""

from __future__ import annotations

import torch


def d_outputs(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    real, fake = real_logits.detach().float(), fake_logits.detach().float()
    return {"d_real": real.mean(), "d_fake": fake.mean(),
            "d_acc_real": (real > 0).float().mean(), "d_acc_fake": (fake < 0).float().mean()}


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def diversity(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Mean pairwise distance among fakes over the same among reals: ≈ 1 for a healthy G, → 0 as G collapses
    onto few outputs. Cheap (one batch), scale-free, and works for images and for 2D points alike."""
    def spread(x):
        x = x.detach().float().flatten(1)
        return torch.pdist(x).mean() if x.shape[0] > 1 else torch.zeros((), device=x.device)

    r = spread(real)
    return spread(fake) / r.clamp_min(1e-8)


class Watchdog:
    """Warns when a symptom persists for ``patience`` consecutive log steps; once per episode. Silent before
    ``start_step``: a freshly initialised G is near-constant, which is not collapse."""

    def __init__(self, patience: int = 3, collapse_below: float = 0.25, won_above: float = 0.98,
                 won_margin: float = 10.0, start_step: int = 200):
        self.patience, self.collapse_below, self.won_above = patience, collapse_below, won_above
        self.won_margin = won_margin
        self.start_step = start_step
        self.counts = {"collapse": 0, "d_won": 0}

    def check(self, step: int, stats: dict[str, float]) -> list[str]:
        symptoms = {
            "collapse": stats.get("diversity", 1.0) < self.collapse_below,
            # Accuracy alone fires on healthy runs: a DCGAN on easy data keeps D near 100% with logits of +-2..4
            # while G improves (the non-saturating loss still gives G a strong gradient there). D has won when it
            # is also saturated: a mean margin of 10 logits is sigmoid 0.993 / 0.007 on the two sides.
            "d_won": min(stats.get("d_acc_real", 0.0), stats.get("d_acc_fake", 0.0)) > self.won_above
            and stats.get("d_real", 0.0) - stats.get("d_fake", 0.0) > self.won_margin,
        }
        msgs = []
        if step < self.start_step:
            return msgs
        for name, present in symptoms.items():
            self.counts[name] = self.counts[name] + 1 if present else 0
            if self.counts[name] == self.patience:
                msgs.append(self._message(name, step, stats))
        return msgs

    def _message(self, name: str, step: int, s: dict) -> str:
        if name == "collapse":
            return (f"warning: step {step}: possible mode collapse — fake diversity is {s['diversity']:.2f} of "
                    "real's; try another loss, a balancer, augmentation or a lower G learning rate")
        return (f"warning: step {step}: D has won — it classifies {s['d_acc_real']:.0%} of reals and "
                f"{s['d_acc_fake']:.0%} of fakes correctly by a mean logit margin of "
                f"{s['d_real'] - s['d_fake']:.1f}, so G learns little from it; try augmentation, R1, "
                "a skip-D/adaptive balancer or a lower D learning rate")
