"""Built-in ganforge plugins. Loaded through the ``ganforge.plugins`` entry point like any third-party package."""

from . import architectures, augment, balancers, datasets, extractors, losses, metrics, regularizers  # noqa: F401
