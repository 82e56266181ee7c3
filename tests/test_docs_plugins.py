"""The plugin examples in docs/plugins.md are complete, use no built-in name, cover every kind and pass the
contract checks of ``ganforge.testing``: the page cannot drift from the API it documents."""

import re

import pytest
from conftest import ROOT

from ganforge import registry, testing

DOC = ROOT / "docs" / "plugins.md"
EXAMPLES = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if "@register(" in b]
REGISTERS = re.compile(r'@register\("(\w+)", "(\w+)"\)')


def _ids(block: str) -> str:
    return ",".join(f"{k}:{n}" for k, n in REGISTERS.findall(block))


def test_examples_cover_every_kind():
    kinds = {k for b in EXAMPLES for k, _ in REGISTERS.findall(b)}
    assert kinds == set(registry.KINDS), f"docs/plugins.md has no example for {set(registry.KINDS) - kinds}"


@pytest.mark.parametrize("block", EXAMPLES, ids=[_ids(b) for b in EXAMPLES])
def test_example_passes_its_contract(block, tmp_path, monkeypatch):
    registry.load_plugins()
    for kind, table in list(registry._REGISTRY.items()):
        # a private copy of each table: what the example registers disappears after the test
        monkeypatch.setitem(registry._REGISTRY, kind, dict(table))
    names = REGISTERS.findall(block)
    taken = [f"{k}:{n}" for k, n in names if n in registry._REGISTRY[k]]
    assert not taken, f"example reuses a registered name: {taken}"
    exec(compile(block, f"{DOC}:{_ids(block)}", "exec"), {"__name__": "docs_plugins_example"})
    for kind, name in names:
        testing.check_plugin(kind, name, tmp_path=tmp_path)
