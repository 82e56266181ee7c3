"""Augmentation plugins (differentiable, applied to real and fake before D)."""

from . import ada, diffaugment  # noqa: F401
