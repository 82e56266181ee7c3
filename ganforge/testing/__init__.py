"""Contract checks for plugins: the ones ganforge runs on its own built-ins, for your pytest suite too.

    from ganforge.testing import check_loss

    def test_my_loss():
        check_loss("my_loss")                  # built with its contract_options
        check_loss("my_loss", margin=2.0)      # options on top of contract_options

Each ``check_<kind>(name, tmp_path=None, **options)`` looks the plugin up in the registry (entry points are loaded
as for a run), builds it with ``options`` merged over the class attribute ``contract_options`` (a dict: keep it
tiny, the checks run on CPU; an extractor may define ``contract_setup(tmp_path) -> dict`` instead), checks the
contract of its kind and returns the built plugin. A broken contract raises AssertionError naming the plugin;
an unknown name raises ganforge.errors.PluginError. ``tmp_path`` is a directory the check may write to (pytest's
``tmp_path`` fixture); without one, checks that need a directory use a temporary one.

``check_plugin(kind, name, ...)`` does the same for any kind; ``CHECKS`` maps every kind to its check.
"""

from __future__ import annotations

from pathlib import Path

from .data import check_dataset
from .evaluation import check_extractor, check_metric
from .models import check_architecture, check_regularizer
from .style import check_style_extractor, check_style_loss, check_style_network
from .training import check_augment, check_balancer, check_loss

CHECKS = {
    "architecture": check_architecture,
    "loss": check_loss,
    "regularizer": check_regularizer,
    "balancer": check_balancer,
    "augment": check_augment,
    "metric": check_metric,
    "extractor": check_extractor,
    "dataset": check_dataset,
    "style_loss": check_style_loss,
    "style_extractor": check_style_extractor,
    "style_network": check_style_network,
}


def check_plugin(kind: str, name: str, /, *, tmp_path: str | Path | None = None, **options):
    """Check plugin ``name`` of ``kind`` against its kind's contract; returns the built plugin. A kind without a
    check fails: a new kind must come with its contract."""
    check = CHECKS.get(kind)
    assert check is not None, f"no contract check for plugin kind {kind!r} (checks: {', '.join(CHECKS)})"
    return check(name, tmp_path=tmp_path, **options)


__all__ = ["CHECKS", "check_plugin", "check_architecture", "check_loss", "check_regularizer", "check_balancer",
           "check_augment", "check_metric", "check_extractor", "check_dataset", "check_style_loss",
           "check_style_extractor", "check_style_network"]
