"""R2 gradient penalty on generated images (R3GAN: with R1, it makes the relativistic pairing loss converge)."""

from __future__ import annotations

from ganforge.registry import register

from .r1 import R1


@register("regularizer", "r2")
class R2(R1):
    """R2: gamma/2 * E ||grad_x D(x)||^2 on fakes (detached from G, so only D is trained by it); every step or lazy
    (``interval``), exactly like R1. R3GAN uses R1 and R2 with the same gamma; with the same interval the two share
    one lazy phase."""

    inputs = ("fake",)
    key = "r2"
