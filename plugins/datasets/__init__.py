"""Built-in dataset sources."""

from . import digits, mixtures, webdataset_source  # noqa: F401
