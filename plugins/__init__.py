"""Built-in ganforge plugins. Loaded through the ``ganforge.plugins`` entry point like any third-party package."""

from . import (  # noqa: F401
    architectures,
    augment,
    balancers,
    datasets,
    extractors,
    losses,
    metrics,
    regularizers,
    style,
)
