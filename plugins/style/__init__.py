"""Style transfer: the loss terms (content, Gram style, total variation), the feature extractors they read (random
multi-scale filters that need no weights; any timm model by layer name) and the fast stylizer's image-transform
network (Johnson et al.)."""

from . import losses, random_multiscale, timm_layers, transform_net  # noqa: F401
