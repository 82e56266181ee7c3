"""Built-in dataset sources."""

from . import digits, webdataset_source  # noqa: F401
