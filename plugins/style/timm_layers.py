"""``timm`` style extractor: feature maps of any timm model by layer name (VGG-19 by default), never downloaded.

VGG-family models get Gatys' layer names (``conv1_1``, ``relu1_1``, ... ``pool5``) and run only up to the deepest
layer asked for; other models offer the modules of their ``feature_info`` (``layer1``, ``stages.2`` ...). Weights
come from ``weights:`` (a local .safetensors, or .pth/.bin read with ``torch.load(weights_only=True)``) or an
existing Hugging Face hub cache, through the same helpers as the metric extractor ``timm``; ``random_init`` builds
the network untrained (tests only: its Gram matrices mean nothing).
"""

from __future__ import annotations

import torch
from torch import nn

from ganforge.api import StyleExtractor
from ganforge.registry import register

from ..extractors.timm_features import build_timm


def _vgg_names(features: nn.Sequential) -> list[str]:
    """conv{block}_{i} / relu{block}_{i} / pool{block} for each module of a VGG trunk, in order."""
    names, block, i = [], 1, 0
    for m in features:
        if isinstance(m, nn.Conv2d):
            i += 1
            names.append(f"conv{block}_{i}")
        elif isinstance(m, nn.ReLU):
            names.append(f"relu{block}_{i}")
        elif isinstance(m, nn.MaxPool2d):
            names.append(f"pool{block}")
            block, i = block + 1, 0
        else:
            names.append(f"{type(m).__name__.lower()}{block}_{i}")
    return names


@register("style_extractor", "timm")
class TimmLayers(StyleExtractor):
    """Feature maps of a timm model by layer name: ``model`` (default vgg19, layers conv1_1 ... relu5_4,
    pool1..5), ``weights`` a local file, else an existing hub cache, never a download; ``random_init`` for tests."""

    api_version = 1
    contract_options = {"model": "test_resnet", "random_init": True}

    def __init__(self, model: str = "vgg19", weights: str | None = None, random_init: bool = False, seed: int = 0):
        where = f"style_extractor 'timm:{model}'"
        net, self.checksum = build_timm(model, weights, random_init, seed, where,
                                        hint="extractor.weights: /path/model.safetensors (or use "
                                        "extractor.type=random_multiscale, which needs none)")
        net = net.eval().requires_grad_(False)  # frozen: only the image is trained through it
        for m in net.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False  # an in-place ReLU would overwrite the conv output a loss asked for
        cfg = net.pretrained_cfg or {}
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        features = getattr(net, "features", None)
        if isinstance(features, nn.Sequential):  # VGG-like trunk: keep it alone (no classifier in memory)
            self.net, self.seq = features, True
            self.layer_names = tuple(_vgg_names(features))
        else:
            self.net, self.seq = net, False
            self.layer_names = tuple(f["module"] for f in net.feature_info)
            self.modules = dict(net.named_modules())
        self.name = f"timm:{model}"

    def to(self, device) -> TimmLayers:
        self.net = self.net.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def __call__(self, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        x = ((x.float() + 1) / 2 - self.mean) / self.std  # no clamp: the image needs a gradient everywhere
        wanted = set(layers)
        out = {}
        if self.seq:
            last = max(self.layer_names.index(n) for n in wanted)
            for name, m in zip(self.layer_names[:last + 1], self.net):
                x = m(x)
                if name in wanted:
                    out[name] = x
            return out
        hooks = [self.modules[n].register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o)) for n in wanted]
        try:
            self.net.forward_features(x)
        finally:
            for h in hooks:
                h.remove()
        return out
