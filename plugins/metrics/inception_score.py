"""Inception Score (Salimans et al. 2016) from precomputed class logits.

IS = exp(E_x KL(p(y|x) || p(y))): high when each sample is confidently one class and the classes are spread evenly.
Ranges from 1 (every sample gives the same class distribution) to the number of classes; higher is better. The
fakes are shuffled (seeded) and split into ``splits`` chunks; the result is the mean and std over chunks.
"""

from __future__ import annotations

import torch
from torch_fidelity.metric_isc import isc_features_to_metric

from ganforge.registry import register

from .fid import check_features


@register("metric", "is")
class InceptionScore:
    """Inception Score of the fakes' class logits: ``{"is": mean over splits, "is_std": std over splits}``; higher
    is better (1 .. number of classes). Needs no real samples."""

    input = "logits"
    keys = ("is", "is_std")
    higher_is_better = ("is",)

    def __init__(self, splits: int = 10, seed: int = 0):
        if splits < 1:
            raise ValueError(f"splits must be >= 1, got {splits}")
        if seed < 0:  # numpy's RandomState takes 0 .. 2**32 - 1
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.splits, self.seed = int(splits), int(seed)

    def contract_inputs(self) -> tuple[torch.Tensor, None]:
        g = torch.Generator().manual_seed(0)
        return torch.randn(64, 10, generator=g) * 3, None

    def compute(self, fake: torch.Tensor, real: torch.Tensor | None = None) -> dict[str, float]:
        """IS of ``fake [N, C]`` logits (pre-softmax); ``real`` is ignored."""
        f, _ = check_features("is", fake)
        if len(f) < self.splits:  # an empty chunk would give NaN
            raise ValueError(f"is: splits={self.splits} needs at least that many samples, got fake {tuple(f.shape)}")
        out = isc_features_to_metric(f, splits=self.splits, shuffle=True, rng_seed=self.seed)
        return {"is": float(out["inception_score_mean"]), "is_std": float(out["inception_score_std"])}
