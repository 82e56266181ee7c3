"""docs/recipes.md documents every key a resolved recipe has (what `ganforge run --dry-run` prints), for every
shipped recipe; docs point to docs, not to issue threads."""

import re

import pytest
import yaml
from conftest import ROOT

from ganforge import config

PLUGIN_BLOCKS = ("model", "loss", "balancer", "augment", "source", "regularizers", "extractor", "compute",
                 "network")


def _keys(d, prefix=""):
    """Dotted keys of a resolved recipe, into lists (schedule.stages) too. Not a plugin's own options (`ganforge
    plugins show NAME` documents them), nor the user-chosen paths of schedule.values (their curves' keys, yes)."""
    if isinstance(d, list):
        for v in d:
            yield from _keys(v, f"{prefix}[].")
        return
    if not isinstance(d, dict):
        return
    for k, v in d.items():
        if prefix.endswith("schedule.values."):
            yield from _keys(v, f"{prefix}<path>.")
            continue
        yield f"{prefix}{k}"
        if k not in PLUGIN_BLOCKS:
            yield from _keys(v, f"{prefix}{k}.")


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_recipe_reference_names_every_key(recipe):
    resolved = yaml.safe_load(config.dump(config.load_recipe(ROOT / "recipes" / recipe)))
    doc = (ROOT / "docs" / "recipes.md").read_text()

    def named(leaf):  # as a YAML key (`leaf:`), or inside `code` or a {flow, mapping}: not merely the word
        w = re.escape(leaf)
        return re.search(rf"\b{w}\s*:|`[^`\n]*\b{w}\b[^`\n]*`|\{{[^}}\n]*\b{w}\b[^}}\n]*\}}", doc)

    missing = [k for k in _keys(resolved) if not named(k.rsplit(".", 1)[-1])]
    assert not missing, f"docs/recipes.md does not mention: {missing}"


def test_docs_point_to_docs_not_issues():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = [f"{p.name}: {line.strip()}" for p in pages for line in p.read_text().splitlines()
             if re.search(r"\bissues?\b|#\d+\b", line, re.IGNORECASE)]
    assert not found, found


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
