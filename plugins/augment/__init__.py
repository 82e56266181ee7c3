"""Augmentation plugins (differentiable, applied to real and fake before D)."""
