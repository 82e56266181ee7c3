"""ADA — adaptive discriminator augmentation (Karras et al., 2020): a differentiable pipeline whose every
transform is applied to each image with probability ``p``, and a controller that moves ``p`` so that D's
overfitting heuristic r_t = E[sign(D(real))] stays near a target (0.6): r_t above the target means D is too sure
of the reals (overfitting), so p rises; below, p falls.

Only ``ada_signal`` (the sign this plugin observes, averaged over ranks by the engine) feeds the controller,
so p is identical on every rank; p and the controller's accumulator are checkpointed. Random draws use torch's
global RNG (checkpointed by the engine)."""

from __future__ import annotations

import math

import torch

from ganforge.api import Augment
from ganforge.registry import register

from .diffaugment import _check_images, parse_ops

OPS = ("xflip", "rotate90", "translate", "color")


def _reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Map integer indices onto [0, n) by mirror reflection at the borders (no repeated edge pixel)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    m = idx.remainder(period)
    return torch.where(m < n, m, period - m)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def xflip(x: torch.Tensor, p: float) -> torch.Tensor:
    return _where(torch.rand(x.shape[0], device=x.device) < p, x.flip(3), x)


def rotate90(x: torch.Tensor, p: float) -> torch.Tensor:
    """With probability p, rotate by 90, 180 or 270 degrees (uniformly); square images only."""
    if x.shape[2] != x.shape[3]:
        return _where(torch.rand(x.shape[0], device=x.device) < p, x.flip(2, 3), x)  # 180 only
    apply = torch.rand(x.shape[0], device=x.device) < p
    k = torch.randint(1, 4, (x.shape[0],), device=x.device)
    out = x
    for r in (1, 2, 3):
        out = _where(apply & (k == r), torch.rot90(x, r, dims=(2, 3)), out)
    return out


def translate(x: torch.Tensor, p: float, ratio: float = 0.125) -> torch.Tensor:
    """With probability p, shift by round(U(-ratio, ratio) * size) pixels on each axis, reflecting at borders."""
    b, _, h, w = x.shape
    apply = (torch.rand(b, device=x.device) < p).to(x.dtype)
    t = (torch.rand(b, 2, device=x.device) * 2 - 1) * ratio * apply[:, None]
    ty, tx = (t[:, 0] * h).round().long(), (t[:, 1] * w).round().long()
    rows = _reflect(torch.arange(h, device=x.device)[None, :] - ty[:, None], h)  # [B, H]
    cols = _reflect(torch.arange(w, device=x.device)[None, :] - tx[:, None], w)  # [B, W]
    bidx = torch.arange(b, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def color(x: torch.Tensor, p: float, brightness: float = 0.2, contrast: float = 0.5,
          saturation: float = 1.0) -> torch.Tensor:
    """Brightness (additive N(0, 0.2)), contrast (x lognormal(0, 0.5 ln 2)) and saturation (lognormal(0, ln 2)),
    each applied with probability p (ADA's defaults)."""
    b, dev, dt = x.shape[0], x.device, x.dtype

    def gate():
        return (torch.rand(b, 1, 1, 1, device=dev) < p).to(dt)

    x = x + torch.randn(b, 1, 1, 1, device=dev, dtype=dt) * brightness * gate()
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    c = torch.exp2(torch.randn(b, 1, 1, 1, device=dev, dtype=dt) * contrast * gate())
    x = (x - mean) * c + mean
    if x.shape[1] > 1:
        luma = x.mean(dim=1, keepdim=True)
        s = torch.exp2(torch.randn(b, 1, 1, 1, device=dev, dtype=dt) * saturation * gate())
        x = (x - luma) * s + luma
    return x


@register("augment", "ada")
class ADA(Augment):
    """Adaptive discriminator augmentation: x-flips, 90° rotations, integer translation and colour, each with
    probability p; p follows D's overfitting signal E[sign(D(real))] toward ``target`` (``target: null``: fixed p)."""

    contract_options = {"p": 0.5}
    schedulable = ("p",)  # e.g. a cosine p with target: null (R3GAN-style fixed schedule)

    def __init__(self, p: float = 0.0, target: float | None = 0.6, interval: int = 4, ramp_steps: int = 5000,
                 ops: str = "xflip,rotate90,translate,color", p_max: float = 1.0, translate_ratio: float = 0.125):
        names = parse_ops(ops, OPS, "ops")
        if not 0.0 < p_max <= 1.0:
            raise ValueError(f"p_max must be in (0, 1], got {p_max}")
        if not 0.0 <= p <= p_max:
            raise ValueError(f"p must be in [0, p_max={p_max}], got {p}")
        if target is not None and not 0.0 < target < 1.0:
            raise ValueError(f"target must be in (0, 1) (a mean sign of D on reals), got {target}")
        if interval < 1 or ramp_steps < 1:
            raise ValueError(f"interval and ramp_steps must be >= 1, got {interval}, {ramp_steps}")
        if not 0.0 < translate_ratio <= 0.5:
            raise ValueError(f"translate_ratio must be in (0, 0.5], got {translate_ratio}")
        self.ops, self.p, self.target, self.p_max = names, float(p), target, p_max
        self.interval, self.ramp_steps, self.translate_ratio = interval, ramp_steps, translate_ratio
        self.needs_stats = target is not None
        self.sign_sum, self.sign_n = 0.0, 0  # accumulator of the averaged sign over the current interval
        self.rt: float | None = None  # last r_t the controller acted on

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "ada")
        p, x = self.p, images
        if p <= 0:
            return x
        for op in self.ops:
            if op == "xflip":
                x = xflip(x, p)
            elif op == "rotate90":
                x = rotate90(x, p)
            elif op == "translate":
                x = translate(x, p, self.translate_ratio)
            else:
                x = color(x, p)
        return x

    def observe(self, real_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """D's overfitting heuristic on this batch; the engine averages it over ranks before ``update``."""
        return {"ada_signal": real_logits.detach().float().sign().mean()}

    def update(self, step: int, stats: dict[str, float]) -> None:
        """Fold in this iteration's averaged ``ada_signal``; every ``interval`` iterations move p by
        sign(r_t - target) * interval / ramp_steps (so p can cross [0, 1] in ``ramp_steps`` iterations)."""
        if self.target is None or "ada_signal" not in stats or not math.isfinite(stats["ada_signal"]):
            return
        self.sign_sum += float(stats["ada_signal"])
        self.sign_n += 1
        if self.sign_n < self.interval:
            return
        self.rt = self.sign_sum / self.sign_n
        self.sign_sum, self.sign_n = 0.0, 0
        direction = (self.rt > self.target) - (self.rt < self.target)
        self.p = min(max(self.p + direction * self.interval / self.ramp_steps, 0.0), self.p_max)

    def log_stats(self) -> dict[str, float]:
        return {"ada_p": self.p, **({"ada_rt": self.rt} if self.rt is not None else {})}

    def state_dict(self) -> dict:
        return {"p": self.p, "sign_sum": self.sign_sum, "sign_n": self.sign_n, "rt": self.rt}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.sign_sum, self.sign_n, self.rt = state["p"], state["sign_sum"], state["sign_n"], state["rt"]
