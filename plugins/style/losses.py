"""Loss terms of neural style transfer, kind ``style_loss``: content, Gram-matrix style and total variation.

Each term names the extractor layers it reads, computes its targets once from the content and style images
(``targets``), and scores the optimised image against them. Targets are returned, not kept: the terms are
stateless, so nothing of theirs needs checkpointing (the task recomputes targets from the images on resume).
"""

from __future__ import annotations

import torch

from ganforge.api import StyleLoss
from ganforge.registry import register


def gram(features: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, C]``: channel correlations, normalised by C*H*W so that layers of different
    width and resolution (and images of different size) weigh alike."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def content_distance(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of feature maps (the target broadcasts over the batch)."""
    return (features - target).pow(2).mean()


def style_distance(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of Gram matrices."""
    return (gram(features) - target_gram).pow(2).mean()


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertically and of horizontally adjacent pixels, summed: squared rather than
    absolute so the objective stays smooth for L-BFGS."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


def _check_layers(layers: list[str], weights: list[float] | None) -> None:
    if not layers:
        raise ValueError("layers: give at least one extractor layer")
    if weights is not None and len(weights) != len(layers):
        raise ValueError(f"layer_weights: {len(weights)} weights for {len(layers)} layers")


@register("style_loss", "content")
class ContentLoss(StyleLoss):
    """weight * sum over ``layers`` of the mean squared difference between the image's and the content image's
    feature maps (Gatys et al.: keeps the content's layout)."""

    api_version = 1
    contract_options = {"layers": ["a"]}

    def __init__(self, layers: list[str] = ("k3",), weight: float = 1.0):
        _check_layers(list(layers), None)
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.layers, self.weight = tuple(layers), weight

    def targets(self, content, style):
        return {name: content[name].detach() for name in self.layers}

    def __call__(self, image, features, targets):
        d = sum(content_distance(features[n], targets[n]) for n in self.layers)
        return self.weight * d, {"loss_content": d.detach()}


@register("style_loss", "gram")
class GramStyleLoss(StyleLoss):
    """weight * sum over ``layers`` of layer_weight * mean squared difference of Gram matrices (normalised by
    C*H*W) between the image and the style image (Gatys et al.: matches texture, not layout)."""

    api_version = 1
    contract_options = {"layers": ["a", "b"]}

    def __init__(self, layers: list[str] = ("k3", "k5"), layer_weights: list[float] | None = None,
                 weight: float = 1.0):
        _check_layers(list(layers), layer_weights)
        if weight < 0 or any(w < 0 for w in layer_weights or ()):
            raise ValueError("weight and layer_weights must be >= 0")
        self.layers, self.weight = tuple(layers), weight
        self.layer_weights = tuple(layer_weights) if layer_weights is not None else (1.0,) * len(self.layers)

    def targets(self, content, style):
        return {name: gram(style[name]).detach() for name in self.layers}

    def __call__(self, image, features, targets):
        d = sum(w * style_distance(features[n], targets[n]) for n, w in zip(self.layers, self.layer_weights))
        return self.weight * d, {"loss_style": d.detach()}


@register("style_loss", "total_variation")
class TotalVariationLoss(StyleLoss):
    """weight * total variation of the image itself (squared neighbour differences): suppresses the
    high-frequency noise that feature matching alone leaves."""

    api_version = 1
    layers: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0):
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = weight

    def targets(self, content, style):
        return {}

    def __call__(self, image, features, targets):
        tv = total_variation(image)
        return self.weight * tv, {"loss_tv": tv.detach()}
