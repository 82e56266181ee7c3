"""Regularizer plugins (penalties with a lazy interval)."""
