"""Kernel Inception Distance (Bińkowski et al. 2018) from precomputed features.

KID is the unbiased estimate of MMD^2 between fake and real features under the polynomial kernel
k(x, y) = (gamma <x, y> + coef0)^degree, averaged over ``subsets`` random subsets of ``subset_size`` samples per set.
0 in expectation for identical distributions (single estimates may dip slightly below 0); lower is better. Unlike
FID it is unbiased in N, so values from different sample counts are comparable.
"""

from __future__ import annotations

import torch
from torch_fidelity.metric_kid import kid_features_to_metric

from ganforge.registry import register

from .fid import check_features, contract_features


@register("metric", "kid")
class KID:
    """Kernel Inception Distance: ``{"kid": mean MMD^2 over subsets, "kid_std": its std over subsets}``; lower is
    better. ``gamma=None`` means 1 / D; ``subset_size`` is clamped to the smaller set (as StyleGAN2-ADA does)."""

    input = "features"
    keys = ("kid", "kid_std")
    higher_is_better: tuple[str, ...] = ()

    def __init__(self, subsets: int = 100, subset_size: int = 1000, degree: int = 3, gamma: float | None = None,
                 coef0: float = 1.0, seed: int = 0):
        if subsets < 1:
            raise ValueError(f"subsets must be >= 1, got {subsets}")
        if subset_size < 2:  # the unbiased estimate divides by m (m - 1)
            raise ValueError(f"subset_size must be >= 2, got {subset_size}")
        if degree < 1:
            raise ValueError(f"degree must be >= 1, got {degree}")
        if gamma is not None and not gamma > 0:
            raise ValueError(f"gamma must be > 0 (or null for 1 / D), got {gamma}")
        if coef0 < 0:  # a negative offset makes (gamma <x, y> + coef0)^degree no longer a valid kernel for odd degree
            raise ValueError(f"coef0 must be >= 0, got {coef0}")
        if seed < 0:  # numpy's RandomState takes 0 .. 2**32 - 1
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.subsets, self.subset_size, self.degree = int(subsets), int(subset_size), int(degree)
        self.gamma = None if gamma is None else float(gamma)
        self.coef0, self.seed = float(coef0), int(seed)

    def contract_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return contract_features()

    def compute(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        """KID of ``fake [N_f, D]`` against ``real [N_r, D]`` (any float dtype; computed in float64)."""
        f, r = check_features("kid", fake, real)
        m = min(self.subset_size, len(f), len(r))
        # Every kwarg explicit: torch-fidelity reads missing ones from its DEFAULTS (seed 2020, its own kernel
        # options) and silently ignores misspelt ones, so a wrong name here would go unnoticed.
        out = kid_features_to_metric(
            f, r, kid_subsets=self.subsets, kid_subset_size=m, kid_kernel="poly",
            kid_kernel_poly_degree=self.degree, kid_kernel_poly_gamma=self.gamma,
            kid_kernel_poly_coef0=self.coef0, rng_seed=self.seed, verbose=False)
        return {"kid": float(out["kernel_inception_distance_mean"]),
                "kid_std": float(out["kernel_inception_distance_std"])}
