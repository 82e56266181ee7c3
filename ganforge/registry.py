"""Plugin registry.

Plugins are classes (or factories) registered under a *kind* and a *name* with ``@register(kind, name)``.
Modules that register plugins are discovered through the entry-point group ``ganforge.plugins``; the built-in
``plugins`` package uses that same group, so a third-party package gets exactly the path the built-ins get.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import PluginError

ENTRY_POINT_GROUP = "ganforge.plugins"
KINDS = ("architecture", "loss", "regularizer", "balancer", "augment", "metric", "extractor", "dataset")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    source: str  # "module:qualname [distribution]" — shown by `ganforge plugins` and in duplicate errors

    @property
    def doc(self) -> str:
        return " ".join((inspect.getdoc(self.obj) or "").split("\n\n", 1)[0].split())


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_current_dist: str | None = None  # set while an entry point's module is being imported
_loaded = False


def register(kind: str, name: str | None = None):
    """Class/function decorator: ``@register("loss", "hinge")``. The name defaults to the object's name."""
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r} (kinds: {', '.join(KINDS)})")

    def deco(obj):
        key = name or obj.__name__.lower()
        source = f"{obj.__module__}:{obj.__qualname__}"
        if _current_dist:
            source += f" [{_current_dist}]"
        old = _REGISTRY[kind].get(key)
        if old is not None and old.obj is not obj:
            # Two packages claiming one name would make recipes ambiguous: refuse and name both.
            raise PluginError(f"duplicate {kind} plugin {key!r}: registered by {old.source} and by {source}")
        _REGISTRY[kind][key] = Entry(kind, key, obj, source)
        return obj

    return deco


def load_plugins() -> None:
    """Import every module advertised in the ``ganforge.plugins`` entry-point group (once)."""
    global _loaded, _current_dist
    if _loaded:
        return
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name != "builtin", e.name))
    if not any(e.name == "builtin" for e in eps):
        raise PluginError(
            "built-in plugins not found in entry-point group 'ganforge.plugins': install ganforge "
            "(pip install -e .) rather than running it from a bare checkout"
        )
    for ep in eps:
        dist = getattr(ep, "dist", None)
        _current_dist = f"{dist.name} {dist.version}" if dist is not None else ep.name
        module = ep.value.split(":")[0]
        try:
            importlib.import_module(module)
            _tag_untagged(module, _current_dist)
        except PluginError:
            raise
        except Exception as e:  # a broken third-party package must not look like a ganforge bug
            raise PluginError(f"plugin package {ep.name!r} ({ep.value}) failed to import: {e}") from e
        finally:
            _current_dist = None
    _loaded = True


def _tag_untagged(module: str, dist: str) -> None:
    """Plugins imported directly (``import ganforge_plugins.losses``) before discovery registered without
    their distribution; credit them to the entry point whose package holds them."""
    for table in _REGISTRY.values():
        for key, e in list(table.items()):
            if "[" not in e.source and (e.obj.__module__ == module or e.obj.__module__.startswith(module + ".")):
                table[key] = Entry(e.kind, e.name, e.obj, f"{e.source} [{dist}]")


def entries(kind: str | None = None) -> list[Entry]:
    load_plugins()
    kinds = [kind] if kind else list(KINDS)
    return [e for k in kinds for e in sorted(_REGISTRY[k].values(), key=lambda e: e.name)]


def get(kind: str, name: str, where: str = "") -> Entry:
    load_plugins()
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r} (kinds: {', '.join(KINDS)})")
    table = _REGISTRY[kind]
    if name not in table:
        close = difflib.get_close_matches(str(name), table.keys(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        avail = ", ".join(sorted(table)) or "none registered"
        loc = f"{where}: " if where else ""
        raise PluginError(f"{loc}unknown {kind} plugin {name!r}{hint} (available: {avail})")
    return table[name]


def plugin_options(obj) -> dict[str, inspect.Parameter]:
    """Keyword options a plugin accepts (its constructor's parameters)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(obj):
        params = params[1:]  # drop self
    return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def build(kind: str, block: dict, where: str = "", **extra):
    """Build a plugin from a recipe block ``{type: name, **options}``; ``extra`` are engine-supplied arguments."""
    if not isinstance(block, dict) or "type" not in block:
        raise PluginError(f"{where or kind}: expected a mapping with a 'type' key naming a {kind} plugin")
    opts = {k: v for k, v in block.items() if k != "type"}
    entry = get(kind, block["type"], where=f"{where}.type" if where else "")
    try:
        return entry.obj(**opts, **extra)
    except PluginError:
        raise
    except (TypeError, ValueError) as e:
        raise PluginError(f"{where or kind}: {kind} plugin {entry.name!r} rejected its options: {e}") from e
