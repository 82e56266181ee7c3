"""DiffAugment (Zhao et al., 2020): the same differentiable colour / translation / cutout transforms applied to
real and fake images before D, in both phases, so D cannot overfit a small dataset and G still gets gradients.

Every transform is applied to every sample with fresh random parameters per call, drawn from torch's global RNG
(checkpointed by the engine, so a resumed run draws the same augmentations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.api import Augment
from ganforge.registry import register

POLICIES = ("color", "translation", "cutout")


def parse_ops(text: str, known, option: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``, refusing an empty list or a name not in ``known`` (one message naming both)."""
    ops = [o.strip() for o in text.split(",") if o.strip()]
    unknown = [o for o in ops if o not in known]
    if unknown or not ops:
        raise ValueError(f"{option} {text!r}: unknown or missing transform(s) {unknown} (choose from "
                         f"{', '.join(known)}, comma-separated)")
    return ops


def _check_images(x: torch.Tensor, who: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{who} augments images [B, C, H, W]; got a tensor of shape {list(x.shape)} "
                         "(point data such as the 2D lab mixtures takes no augmentation)")


def rand_brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)


def rand_saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean


def rand_contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size (integer pixels), filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gy = (gy + ty + 1).clamp(0, h + 1)
    gx = (gx + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # the zero border that clamped indices land on
    return padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)


def rand_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of side ``ratio`` x size at a random position in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gy = torch.arange(h, device=x.device).view(1, h, 1)
    gx = torch.arange(w, device=x.device).view(1, 1, w)
    ry, rx = gy - (oy - ch // 2), gx - (ox - cw // 2)  # position inside the square (centred on oy, ox)
    inside = (ry >= 0) & (ry < ch) & (rx >= 0) & (rx < cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


@register("augment", "diffaugment")
class DiffAugment(Augment):
    """DiffAugment: differentiable colour (brightness, saturation, contrast), translation and cutout, applied to
    every real and fake image before D."""

    def __init__(self, policy: str = "color,translation,cutout", translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5):
        ops = parse_ops(policy, POLICIES, "policy")
        if not 0 < translation_ratio <= 0.5:
            raise ValueError(f"translation_ratio must be in (0, 0.5], got {translation_ratio}")
        if not 0 < cutout_ratio <= 1:
            raise ValueError(f"cutout_ratio must be in (0, 1], got {cutout_ratio}")
        self.ops, self.translation_ratio, self.cutout_ratio = ops, translation_ratio, cutout_ratio

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "diffaugment")
        x = images
        for op in self.ops:
            if op == "color":
                x = rand_contrast(rand_saturation(rand_brightness(x)))
            elif op == "translation":
                x = rand_translation(x, self.translation_ratio)
            else:
                x = rand_cutout(x, self.cutout_ratio)
        return x
