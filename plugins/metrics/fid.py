"""Fréchet Inception Distance (Heusel et al. 2017) from precomputed features.

FID = ||mu_f - mu_r||^2 + Tr(S_f + S_r - 2 (S_f S_r)^(1/2)), the Fréchet (2-Wasserstein) distance between Gaussians
fitted to the fake and real features. 0 for identical statistics, >= 0 otherwise; lower is better. The features come
from another plugin (the extractor); this one only does the math, in float64 on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from ganforge.registry import register

# Below this eigenvalue ratio a covariance counts as singular (see FID._trace_sqrt). float64 eigenvalues carry an
# absolute error of about 1e-16 * max; 1e-10 keeps well-conditioned anisotropic covariances on torch-fidelity's path.
_SINGULAR_RATIO = 1e-10


def as_float64(x) -> torch.Tensor:
    """Any tensor/array -> a float64 CPU tensor (the metrics' working precision: FID and KID lose digits in float32)."""
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def check_features(metric: str, fake, real=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both sets as float64 ``[N, D]`` with N >= 2 and one D; a ValueError naming ``metric`` and both shapes if not."""
    f = as_float64(fake)
    r = None if real is None else as_float64(real)
    shapes = f"fake {tuple(f.shape)}" + ("" if r is None else f", real {tuple(r.shape)}")
    for t in (f, r):
        if t is None:
            continue
        if t.dim() != 2 or len(t) < 2:
            raise ValueError(f"{metric}: expected features [N, D] with N >= 2, got {shapes}")
    if r is not None and f.shape[1] != r.shape[1]:
        raise ValueError(f"{metric}: fake and real features differ in dimension, got {shapes}")
    return f, r


def contract_features(n: int = 64, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Small deterministic (fake, real) feature sets ``[n, d]`` for the registry's contract test."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 1.2 + 0.3


@register("metric", "fid")
class FID:
    """Fréchet Inception Distance between fake and real features: ``{"fid": float}``, >= 0, lower is better.

    Uses torch-fidelity's statistics and closed form (the TTUR reference), in float64. When a covariance is
    singular (fewer samples than dimensions, or features in a subspace) the trace term is computed from the
    centred samples instead, which stays exact there."""

    input = "features"
    keys = ("fid",)
    higher_is_better: tuple[str, ...] = ()

    def contract_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return contract_features()

    def compute(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        """FID of ``fake [N_f, D]`` against ``real [N_r, D]`` (any float dtype)."""
        f, r = check_features("fid", fake, real)
        s1, s2 = fid_features_to_statistics(f), fid_features_to_statistics(r)
        if not (self._singular(s1["sigma"], len(f)) or self._singular(s2["sigma"], len(r))):
            return {"fid": float(fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"])}
        diff = s1["mu"] - s2["mu"]
        tr = np.trace(s1["sigma"]) + np.trace(s2["sigma"])
        return {"fid": float(diff @ diff + tr - 2 * self._trace_sqrt(f.numpy(), r.numpy()))}

    @staticmethod
    def _singular(sigma: np.ndarray, n: int) -> bool:
        if n <= sigma.shape[0]:  # rank(S) <= n - 1 < D
            return True
        w = np.linalg.eigvalsh(sigma)
        return bool(w[0] <= _SINGULAR_RATIO * max(w[-1], np.finfo(np.float64).tiny))

    @staticmethod
    def _trace_sqrt(x: np.ndarray, y: np.ndarray) -> float:
        """Tr (S_x S_y)^(1/2) for singular covariances.

        Why not torch-fidelity's sum(sqrt(eigvals(S_x S_y))): a singular S_x S_y has many zero eigenvalues that a
        non-symmetric eigensolver returns as +-1e-16-sized (even complex) noise; sqrt turns each into ~1e-8 * scale,
        and dozens of them cost ~1e-6 relative error (measured: 3e-6 with features in a 5-d subspace of 64-d).
        Instead: with S_x = A^T A, S_y = B^T B (A, B the centred samples / sqrt(n - 1)), the eigenvalues of S_x S_y
        are the squared singular values of A B^T, so the trace is its nuclear norm. QR first (A = Q_a R_a) shrinks
        that to the singular values of R_a R_b^T, at most D x D; SVD is backward stable, so zeros stay ~0."""
        a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
        b = (y - y.mean(0)) / np.sqrt(len(y) - 1)
        ra, rb = np.linalg.qr(a, mode="r"), np.linalg.qr(b, mode="r")
        return float(np.linalg.svd(ra @ rb.T, compute_uv=False).sum())
