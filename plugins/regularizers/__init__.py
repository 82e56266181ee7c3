"""Regularizer plugins (penalties with a lazy interval)."""
from . import path_length, r1, r2  # noqa: F401
