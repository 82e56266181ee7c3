"""``random_multiscale``: one layer of random convolution filters at several scales, kind ``style_extractor``.

Ustyuzhaninov et al. ("What does it take to generate natural textures?", ICLR 2017) showed that a single layer of
random filters, at scales from 3 to 23 pixels followed by a ReLU, synthesises textures about as well as VGG's
Gram matrices. It needs no weights at all: the filters are drawn from a fixed seed, so every machine builds the
same network and ``ganforge stylize`` works the moment ganforge is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.api import StyleExtractor
from ganforge.registry import register


@register("style_extractor", "random_multiscale")
class RandomMultiscale(StyleExtractor):
    """Random conv filters of each size in ``sizes`` (``filters`` per size) + ReLU on the RGB image; layer
    ``k<size>`` is the feature map of that scale. Deterministic from ``seed``; no weights needed."""

    api_version = 1
    contract_options = {"sizes": [3, 5], "filters": 8}

    def __init__(self, sizes: list[int] = (3, 5, 7, 11, 15, 23), filters: int = 128, seed: int = 0,
                 strides: list[int] | None = None):
        sizes = list(sizes)
        if not sizes or any(k < 1 or k % 2 == 0 for k in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError(f"sizes must be distinct odd filter sizes >= 1, got {sizes}")
        if filters < 1:
            raise ValueError(f"filters must be >= 1, got {filters}")
        # A k-pixel filter barely changes over a few pixels, so the large scales are sampled every k // 5 pixels
        # by default (11 -> 2, 15 -> 3, 23 -> 4): 4x less arithmetic for the six default scales, the same statistics up
        # to sampling. strides: [1, ...] computes every scale at every pixel, as in the paper.
        strides = [max(1, k // 5) for k in sizes] if strides is None else list(strides)
        if len(strides) != len(sizes) or any(s < 1 for s in strides):
            raise ValueError(f"strides: one stride >= 1 per size ({len(sizes)}), got {strides}")
        self.strides = dict(zip((f"k{k}" for k in sizes), strides))
        # Our own generator: building the extractor must neither depend on nor shift the run's random stream.
        g = torch.Generator().manual_seed(seed)
        self.weights = {}
        for k in sizes:
            w = torch.randn(filters, 3, k, k, generator=g)
            w -= w.mean(dim=(1, 2, 3), keepdim=True)  # zero mean: a filter responds to structure, not brightness
            # unit-variance responses at every scale, so no scale dominates the Gram matrices by size alone
            self.weights[f"k{k}"] = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        self.layer_names = tuple(self.weights)
        self.name = (f"random_multiscale:{'-'.join(map(str, sizes))}x{filters}:stride{'-'.join(map(str, strides))}"
                     f":seed{seed}")
        self.checksum = f"random-init:seed{seed}"

    def to(self, device) -> RandomMultiscale:
        self.weights = {n: w.to(device) for n, w in self.weights.items()}
        return self

    def __call__(self, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        # grey to RGB; no clamp: the optimised image may stray past [-1, 1] mid-step and still needs a gradient
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        out = {}
        for name in layers:
            w = self.weights[name]
            p = w.shape[-1] // 2
            # replicate, not zeros: zero padding makes a dark frame the style loss would try to match
            out[name] = F.relu(F.conv2d(F.pad(x, (p, p, p, p), mode="replicate"), w, stride=self.strides[name]))
        return out
