"""Projected discriminator (Sauer et al., "Projected GANs Converge Faster", NeurIPS 2021): D judges images through
a frozen pretrained timm network (EfficientNet-lite, DeiT, ...) with small trainable heads on several of its
feature scales. G comes from any other architecture plugin (``generator:`` block)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganforge import registry
from ganforge.api import Architecture
from ganforge.registry import register

from ..extractors.timm_features import build_timm


class Head(nn.Module):
    """One feature scale: a fixed random 1x1 projection (the paper's cross-channel mixing: random and untrained,
    so D cannot undo the pretrained features), then strided convs down to <= 4x4 and a 1x1 logit map, averaged."""

    def __init__(self, cin: int, size: int, width: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("mix", torch.randn(width, cin, 1, 1, generator=g) / cin ** 0.5)
        layers = []
        while size > 4:
            layers += [nn.Conv2d(width, width, 4, 2, 1), nn.LeakyReLU(0.2)]
            size //= 2
        self.convs = nn.Sequential(*layers, nn.Conv2d(width, 1, 1))

    def forward(self, f):
        return self.convs(F.conv2d(f, self.mix.to(f.dtype))).flatten(1).mean(1)


class ProjectedDiscriminator(nn.Module):
    def __init__(self, backbone: nn.Module, scales: int, input_size: int, width: int):
        super().__init__()
        backbone.eval().requires_grad_(False)  # frozen: gradients pass through it to the image, never into it
        self.backbone, self.scales, self.input_size = backbone, scales, input_size
        cfg = backbone.pretrained_cfg or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1))
        # The last ``scales`` feature maps (what forward_intermediates(indices=scales) returns), from timm's
        # feature_info: no forward pass here, so D can be built on the meta device (the pre-flight).
        info = backbone.feature_info[-scales:]
        self.heads = nn.ModuleList(Head(f["num_chs"], max(1, input_size // f["reduction"]), width, seed=i)
                                   for i, f in enumerate(info))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # its batch-norm statistics stay the pretrained ones, in both phases
        return self

    def _features(self, x):
        x = ((x.float() + 1) / 2).expand(-1, 3, -1, -1)  # [-1, 1] grey or RGB -> [0, 1] RGB
        x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
        return self.backbone.forward_intermediates((x - self.mean) / self.std, indices=self.scales,
                                                   intermediates_only=True)

    def forward(self, x):
        return sum(head(f) for head, f in zip(self.heads, self._features(x)))


@register("architecture", "projected")
class Projected(Architecture):
    """G from ``generator`` (any architecture block, e.g. ``{type: r3gan, ...}``); D = a frozen timm ``backbone``
    seeing images resized to ``input_size``, with a trainable head on each of its last ``scales`` feature maps
    (``width`` channels). Weights: ``weights`` (a local .safetensors/.pth) or an existing Hugging Face cache; never
    a download. ``random_init: true`` builds an untrained backbone — for tests and pipeline checks only: the paper's
    speed-up comes from pretrained features."""

    contract_options = {"generator": {"type": "dcgan", "resolution": 16, "g_width": 8}, "random_init": True,
                        "input_size": 32, "width": 8}

    def __init__(self, generator: dict, backbone: str = "tf_efficientnet_lite0", weights: str | None = None,
                 random_init: bool = False, scales: int = 4, input_size: int = 224, width: int = 64):
        if not isinstance(generator, dict) or generator.get("type") in (None, "projected"):
            raise ValueError("generator must be an architecture block such as {type: r3gan, ...}")
        if scales < 1 or width < 1 or input_size < 32:
            raise ValueError(f"need scales >= 1, width >= 1 and input_size >= 32; got {scales}, {width}, {input_size}")
        self.gen = registry.build("architecture", generator, "model.generator")
        self.resolution, self.channels, self.latent_dim = self.gen.resolution, self.gen.channels, self.gen.latent_dim
        self.backbone_name, self.weights, self.random_init = backbone, weights, random_init
        self.scales, self.input_size, self.width = scales, input_size, width
        with torch.device("meta"):  # missing weights or an unknown backbone fail here, as one line, at build time
            net, _ = build_timm(backbone, weights, random_init, 0, "model 'projected'", hint="model.weights: /path")
        if len(net.feature_info) < scales:
            raise ValueError(f"backbone {backbone!r} has {len(net.feature_info)} feature scales, scales={scales}")

    def build_generator(self) -> nn.Module:
        return self.gen.build_generator()

    def build_discriminator(self) -> nn.Module:
        net, _ = build_timm(self.backbone_name, self.weights, self.random_init, 0, "model 'projected'",
                            hint="model.weights: /path")
        return ProjectedDiscriminator(net, self.scales, self.input_size, self.width)

    def sample_latents(self, n, generator=None, device=None):
        return self.gen.sample_latents(n, generator=generator, device=device)
