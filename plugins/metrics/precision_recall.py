"""Improved precision and recall (Kynkäänniemi et al. 2019) from precomputed features.

Each set's support is estimated as the union of balls around its samples, each ball's radius the distance to the
sample's k-th nearest neighbour in its own set. *Precision*: the share of fake samples inside the real support
(fidelity). *Recall*: the share of real samples inside the fake support (coverage / diversity). Both in [0, 1];
higher is better.
"""

from __future__ import annotations

import torch
from torch_fidelity.metric_prc import prc_features_to_metric

from ganforge.registry import register

from .fid import check_features, contract_features

# Rows per distance block: torch-fidelity's part-wise path keeps [block, N] distances, not [N, N] (50k x 50k
# float64 would be 20 GB); the result does not depend on it.
_BLOCK = 1024


@register("metric", "pr")
class PrecisionRecall:
    """Improved precision/recall with k-NN radii: ``{"precision": float, "recall": float}``, both in [0, 1], higher
    is better. ``k`` is the neighbourhood size (3 in the paper)."""

    input = "features"
    keys = ("precision", "recall")
    higher_is_better = ("precision", "recall")

    def __init__(self, k: int = 3):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)

    def contract_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return contract_features()

    def compute(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        """Precision and recall of ``fake [N_f, D]`` against ``real [N_r, D]`` (float64 distances)."""
        f, r = check_features("pr", fake, real)
        if min(len(f), len(r)) <= self.k:  # the k-th neighbour other than the sample itself must exist
            raise ValueError(f"pr: k={self.k} needs more than k samples per set, got fake {tuple(f.shape)}, "
                             f"real {tuple(r.shape)}")
        # torch-fidelity's convention: features_1 generated, features_2 real.
        out = prc_features_to_metric(f, r, prc_neighborhood=self.k, prc_batch_size=_BLOCK, save_cpu_ram=True,
                                     verbose=False)
        return {"precision": float(out["precision"]), "recall": float(out["recall"])}
