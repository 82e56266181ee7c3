"""Feature extractors for metrics: the FID Inception network, any timm model (never downloaded), and a classifier
trained on the dataset's own labels."""

from . import classifier, inception, timm_features  # noqa: F401
