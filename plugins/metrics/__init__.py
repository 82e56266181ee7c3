"""Metric plugins."""

from . import class_coverage, fid, inception_score, kid, mode_coverage, precision_recall  # noqa: F401
