"""Feature extractors for metrics: the FID Inception network and any timm model, never downloaded."""

from . import inception, timm_features  # noqa: F401
