"""Mode coverage on 2D Gaussian mixtures, as reported by the Unrolled GAN, VEEGAN and PacGAN papers.

Protocol (PacGAN's public code): draw samples from G; a sample is *high quality* when it lies within
``n_sigma`` (3) standard deviations of its nearest mode; a mode is *covered* when at least ``min_count`` (1)
high-quality samples land on it; the *reverse KL* is KL(q || uniform) where q is the histogram of the
high-quality samples over the modes (0 when G spreads them evenly, log K when all sit on one mode, +inf when G
produces no high-quality sample at all).

The functions are pure (tensors or arrays in, floats out); ``ModeCoverage`` wraps them as a registered metric.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ganforge import registry
from ganforge.registry import register


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().double().cpu()


def nearest_modes(samples, means) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest mode [N], distance to it [N]) for points ``[N, 2]`` and modes ``[K, 2]``."""
    d = torch.cdist(_t(samples), _t(means))
    dist, idx = d.min(dim=1)
    return idx, dist


def mode_histogram(samples, means, std: float, n_sigma: float = 3.0) -> torch.Tensor:
    """Counts ``[K]`` of high-quality samples (within ``n_sigma * std`` of their nearest mode) per mode."""
    idx, dist = nearest_modes(samples, means)
    hq = dist <= n_sigma * std
    return torch.bincount(idx[hq], minlength=len(_t(means))).to(torch.float64)


def high_quality_share(samples, means, std: float, n_sigma: float = 3.0) -> float:
    """Fraction of samples within ``n_sigma * std`` of their nearest mode."""
    _, dist = nearest_modes(samples, means)
    return float((dist <= n_sigma * std).double().mean()) if len(dist) else 0.0


def modes_covered(samples, means, std: float, n_sigma: float = 3.0, min_count: int = 1) -> int:
    """Number of modes with at least ``min_count`` high-quality samples."""
    return int((mode_histogram(samples, means, std, n_sigma) >= min_count).sum())


def reverse_kl(samples, means, std: float, n_sigma: float = 3.0) -> float:
    """KL(q || uniform) of the high-quality samples' mode histogram q (nats); +inf without any such sample."""
    h = mode_histogram(samples, means, std, n_sigma)
    if h.sum() == 0:
        return math.inf
    q = h / h.sum()
    q = q[q > 0]
    return float((q * (q * len(h)).log()).sum())


def mode_coverage(samples, means, std: float, n_sigma: float = 3.0, min_count: int = 1) -> dict[str, float]:
    """All three numbers at once: ``modes``, ``high_quality`` (a fraction), ``reverse_kl`` (nats)."""
    return {"modes": float(modes_covered(samples, means, std, n_sigma, min_count)),
            "high_quality": high_quality_share(samples, means, std, n_sigma),
            "reverse_kl": reverse_kl(samples, means, std, n_sigma)}


@register("metric", "mode_coverage")
class ModeCoverage:
    """Modes covered, share of high-quality samples and reverse KL to uniform, for a 2D mixture dataset
    (``grid25`` or ``ring8``) — the numbers the Unrolled GAN / VEEGAN / PacGAN papers report."""

    def __init__(self, dataset: str = "grid25", n_sigma: float = 3.0, min_count: int = 1):
        source = registry.build("dataset", {"type": dataset}, "metric.dataset")
        if not hasattr(source, "means"):
            raise ValueError(f"dataset {dataset!r} is not a 2D mixture (it has no modes)")
        if n_sigma <= 0:
            raise ValueError(f"n_sigma must be > 0, got {n_sigma}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        self.means, self.std = source.means, source.std
        self.n_sigma, self.min_count = n_sigma, min_count
        self.source = source

    @classmethod
    def from_source(cls, source, n_sigma: float = 3.0, min_count: int = 1) -> ModeCoverage:
        """The metric for an already built mixture source (the lab's, with the recipe's own options)."""
        self = cls.__new__(cls)
        self.means, self.std, self.source = source.means, source.std, source
        self.n_sigma, self.min_count = n_sigma, min_count
        return self

    def plot(self, points, extent: float, size: int = 256) -> np.ndarray:
        return scatter_image(points, extent, size, self.means, self.std, self.n_sigma)

    def contract_inputs(self, n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs this metric takes, for contract tests: (fake, real) samples ``[n, 2]``."""
        g = torch.Generator().manual_seed(0)
        return self.source.sample(n, g), self.source.sample(n, g)

    def compute(self, fake: torch.Tensor, real: torch.Tensor | None = None) -> dict[str, float]:
        """Scores of G's samples ``fake [N, 2]``; the modes are known, so ``real`` is not needed."""
        return mode_coverage(fake, self.means, self.std, self.n_sigma, self.min_count)


# ------------------------------------------------------------------------------------------------- plotting
def scatter_image(points, extent: float, size: int = 256, means=None, std: float | None = None,
                  n_sigma: float = 3.0) -> np.ndarray:
    """A scatter plot ``[size, size, 3]`` uint8 of ``points [N, 2]`` over ``[-extent, extent]^2``: high-quality
    samples blue, others red, each mode's ``n_sigma * std`` disc shaded grey. Pure numpy (no matplotlib)."""
    img = np.full((size, size, 3), 255, np.uint8)
    pts = _t(points).numpy()

    def to_px(xy):
        col = (xy[:, 0] + extent) / (2 * extent) * (size - 1)
        row = (extent - xy[:, 1]) / (2 * extent) * (size - 1)  # y up
        return np.rint(row).astype(int), np.rint(col).astype(int)

    colours = np.tile(np.array([[40, 90, 200]], np.uint8), (len(pts), 1))
    if means is not None and std is not None:
        m = _t(means).numpy()
        r_px = max(1.0, n_sigma * std / (2 * extent) * (size - 1))
        yy, xx = np.mgrid[0:size, 0:size]
        mr, mc = to_px(m)
        for r0, c0 in zip(mr, mc):
            img[(yy - r0) ** 2 + (xx - c0) ** 2 <= r_px ** 2] = (215, 215, 215)
        if len(pts):
            _, dist = nearest_modes(pts, m)
            colours[(dist > n_sigma * std).numpy()] = (210, 50, 40)
    if len(pts):
        rows, cols = to_px(pts)
        for dr in (0, 1):  # 2x2 dots: visible at 256 px, still separable
            for dc in (0, 1):
                r, c = rows + dr, cols + dc
                ok = (r >= 0) & (r < size) & (c >= 0) & (c < size)
                img[r[ok], c[ok]] = colours[ok]
    return img
