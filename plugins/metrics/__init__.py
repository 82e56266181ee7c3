"""Metric plugins."""

from . import mode_coverage  # noqa: F401
