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


def test_pack_commands_and_shard_urls_in_the_docs_agree():
    """A local shard pattern in quickstart/data.md lies in a folder that a `ganforge data pack` line of the same page
    writes (not a look-alike such as /data/faces for data/faces), with the file names the packer really gives."""
    from ganforge.datatools.pack import PackOptions

    for page in ("quickstart.md", "data.md"):
        doc = (ROOT / "docs" / page).read_text()
        outs = set(re.findall(r"ganforge data pack \S+ (\S+)", doc))
        patterns = re.findall(r"([^\s`'\"(=]+)/(\w+)-\{(\d+)\.\.(\d+)\}\.tar", doc)
        local = [p for p in patterns if "://" not in p[0]]
        assert outs and local, page
        for folder, prefix, first, last in local:
            assert folder in outs, f"{page}: {folder}/ is not what `ganforge data pack` writes there ({outs})"
            assert prefix == PackOptions().prefix and first == "000000" and len(last) == 6, page
