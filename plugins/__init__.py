"""Built-in ganforge plugins. Loaded through the ``ganforge.plugins`` entry point like any third-party package."""

from . import architectures, balancers, datasets, losses  # noqa: F401
