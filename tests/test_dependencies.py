"""Dependencies are declared honestly: every third-party module ganforge or its built-in plugins import belongs to
a distribution pyproject.toml declares, and every declared runtime dependency is imported somewhere."""

import ast
import re
import sys
from importlib.metadata import packages_distributions

import tomllib
from conftest import ROOT


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level() -> set[str]:
    mods = set()
    for folder in ("ganforge", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"ganforge", "ganforge_plugins", "__future__"}


def test_every_import_is_declared_and_every_declaration_is_used():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in meta["dependencies"]}
    dists = packages_distributions()
    used = {}
    for mod in _imported_top_level():
        assert mod in dists, f"{mod} is imported but no installed distribution provides it"
        used[mod] = {_norm(d) for d in dists[mod]}
    undeclared = {m: d for m, d in used.items() if not d & declared}
    assert not undeclared, f"imported but not declared in pyproject dependencies: {undeclared}"
    unused = declared - {d for ds in used.values() for d in ds}
    assert not unused, f"declared but never imported by ganforge or its plugins: {unused}"
