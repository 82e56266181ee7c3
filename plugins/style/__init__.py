"""Style transfer (Gatys et al.): the loss terms (content, Gram style, total variation) and the feature extractors
they read (random multi-scale filters that need no weights; any timm model by layer name)."""

from . import losses, random_multiscale, timm_layers  # noqa: F401
