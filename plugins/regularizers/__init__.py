"""Regularizer plugins (penalties with a lazy interval)."""
from . import path_length, r1  # noqa: F401
