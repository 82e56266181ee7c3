"""Metric plugins."""
