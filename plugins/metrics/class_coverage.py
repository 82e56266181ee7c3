"""Class coverage: what a classifier trained on the dataset's own labels says about generated samples.

For labelled image data (shards with ``cls``, like the embedded digits) this answers the questions a sample grid
raises, with numbers: which classes does G produce and how often (``class_share/<k>``, ``classes_covered`` = the
classes with at least ``min_share`` of the samples), how many samples look like *some* class (``confident``: share
with top probability >= ``confidence``), and how far the fakes' classifier features are from the reals'
(``class_fd``, a Fréchet distance). A Fréchet distance alone is hard to read, so the same statistic between two
disjoint halves of the reals, at the same sample count, is reported next to it (``class_fd_floor``) with their
ratio (``class_fd_ratio``; 1 is as good as real data gets).

It brings its own extractor (``classifier``, trained once on the reals and cached): no downloaded weights.
"""

from __future__ import annotations

import torch

from ganforge.registry import register

from .fid import FID, as_float64

FLOOR_SEED = 0  # which reals fall in which half: fixed, so the floor is the same number at every evaluation


def class_histogram(logits: torch.Tensor) -> torch.Tensor:
    """Share of samples per class ``[K]`` (argmax of ``logits [N, K]``)."""
    k = logits.shape[1]
    return torch.bincount(logits.argmax(1), minlength=k).double() / max(len(logits), 1)


def confident_share(logits: torch.Tensor, confidence: float) -> float:
    """Share of samples whose top class probability is at least ``confidence``."""
    return float((torch.softmax(as_float64(logits), 1).amax(1) >= confidence).double().mean())


@register("metric", "class_coverage")
class ClassCoverage:
    """Classes covered (>= ``min_share`` of samples each), share classified with probability >= ``confidence``,
    and the Fréchet distance of classifier features with its real-vs-real floor. Labelled data only."""

    input = ("logits", "features")
    keys = ("classes_covered", "confident", "class_fd", "class_fd_floor", "class_fd_ratio")
    higher_is_better = ("classes_covered", "confident")

    def __init__(self, min_share: float = 0.05, confidence: float = 0.9, classifier: dict | None = None):
        if not 0 < min_share <= 1:
            raise ValueError(f"min_share must be in (0, 1], got {min_share}")
        if not 0 < confidence <= 1:
            raise ValueError(f"confidence must be in (0, 1], got {confidence}")
        if classifier is not None and not isinstance(classifier, dict):
            raise ValueError(f"classifier must be a mapping of the classifier extractor's options, got {classifier!r}")
        self.min_share, self.confidence = float(min_share), float(confidence)
        # the extractor this metric scores with, whatever metrics.extractor says (that one is Inception's)
        self.extractor = {"type": "classifier", **(classifier or {})}

    def contract_inputs(self) -> tuple[dict, dict]:
        g = torch.Generator().manual_seed(0)
        real = {"logits": torch.randn(80, 10, generator=g) * 4, "features": torch.randn(80, 8, generator=g)}
        fake = {"logits": torch.randn(40, 10, generator=g) * 4, "features": torch.randn(40, 8, generator=g) + 0.5}
        return fake, real

    def compute(self, fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor]) -> dict[str, float]:
        """``fake``/``real``: ``{"logits": [N, K], "features": [N, D]}`` from the classifier."""
        fl, rl = as_float64(fake["logits"]), as_float64(real["logits"])
        if fl.dim() != 2 or rl.dim() != 2 or fl.shape[1] != rl.shape[1]:
            raise ValueError(f"class_coverage: logits of fake {tuple(fl.shape)} and real {tuple(rl.shape)} must be "
                             "[N, K] with one K")
        share = class_histogram(fl)
        out = {"classes_covered": float((share >= self.min_share).sum()),
               "confident": confident_share(fl, self.confidence)}
        ff, rf = as_float64(fake["features"]), as_float64(real["features"])
        # The floor compares two disjoint halves of the reals; the fakes are compared with the same first half at
        # the same count. Fréchet distances carry a bias that falls with the sample count, so both numbers must
        # be taken at one count to be comparable.
        m = min(len(ff), len(rf) // 2)
        if m < 2:
            raise ValueError(f"class_coverage: needs at least 2 fakes and 4 reals, got {len(ff)} and {len(rf)}")
        order = torch.randperm(len(rf), generator=torch.Generator().manual_seed(FLOOR_SEED))
        half_a, half_b = rf[order[:m]], rf[order[m:2 * m]]
        fd = FID().compute(ff[:m], half_a)["fid"]
        floor = FID().compute(half_b, half_a)["fid"]
        out |= {"class_fd": fd, "class_fd_floor": floor, "class_fd_ratio": fd / max(floor, 1e-12)}
        out |= {f"class_share/{k}": float(v) for k, v in enumerate(share)}
        return out
