"""docs/recipes.md documents every key a resolved recipe has (what `ganforge run --dry-run` prints)."""

import re

import yaml
from conftest import ROOT

from ganforge import config


def _keys(d, prefix=""):
    for k, v in d.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("model", "loss", "balancer", "augment", "source"):  # plugin options
            yield from _keys(v, f"{prefix}{k}.")


def test_recipe_reference_names_every_key():
    resolved = yaml.safe_load(config.dump(config.load_recipe(ROOT / "recipes" / "dcgan.yaml")))
    doc = (ROOT / "docs" / "recipes.md").read_text()
    missing = [k for k in _keys(resolved) if not re.search(rf"\b{re.escape(k.rsplit('.', 1)[-1])}\b", doc)]
    assert not missing, f"docs/recipes.md does not mention: {missing}"
