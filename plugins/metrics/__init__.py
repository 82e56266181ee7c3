"""Metric plugins."""

from . import fid, inception_score, kid, mode_coverage, precision_recall  # noqa: F401
