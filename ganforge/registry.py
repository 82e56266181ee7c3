"""Plugin registry.

Plugins are classes (or factories) registered under a *kind* and a *name* with ``@register(kind, name)``.
Modules that register plugins are discovered through the entry-point group ``ganforge.plugins``; the built-in
``ganforge_plugins`` package uses that same group, so a third-party package gets exactly the path the built-ins get.

A third-party package can never break the host: one that fails to import is a warning naming its distribution
(its plugins are unavailable, every other one works); a name registered twice, or by a plugin written for another
plugin API, is an error only for the recipe that uses that name. Discovery runs in the same order on every rank
(built-ins, then entry points sorted by name, then ``-p`` requests, then a recipe's ``imports:``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import PluginError

ENTRY_POINT_GROUP = "ganforge.plugins"
KINDS = ("architecture", "loss", "regularizer", "balancer", "augment", "metric", "extractor", "dataset",
         "style_loss", "style_extractor", "style_network")
API_VERSION = 1  # the plugin contract's major version (ganforge.api.API_VERSION); a plugin may set api_version
BUILTIN = "builtin"
AUTOLOAD_OFF = "GANFORGE_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    source: str  # "module:qualname [distribution version]" — shown by `ganforge plugins` and in errors

    @property
    def doc(self) -> str:
        return " ".join((inspect.getdoc(self.obj) or "").split("\n\n", 1)[0].split())

    @property
    def dist(self) -> str:
        """"name version" of the distribution (or "imports: file") it came from; "" when unknown."""
        return self.source.rsplit(" [", 1)[1][:-1] if self.source.endswith("]") and " [" in self.source else ""


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_CLASHES: dict[tuple[str, str], list[Entry]] = {}  # every registration of a contested (kind, name)
_REFUSED: dict[tuple[str, str], str] = {}  # (kind, name) -> why it cannot be used (plugin API mismatch)
BROKEN: dict[str, str] = {}  # "distribution version" -> "ErrorType: message" for packages that failed to import
_requested: list[str] = []  # `ganforge -p SPEC` (loaded after the entry points)
_current_dist: str | None = None  # set while a plugin package's module is being imported
_loaded = False


def _debug() -> bool:
    return bool(os.environ.get("GANFORGE_DEBUG"))


def _warn(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # one warning per job, not one per rank
        print(f"warning: {msg}", file=sys.stderr)


def register(kind: str, name: str | None = None):
    """Class/function decorator: ``@register("loss", "my_hinge")``. The name defaults to the object's name."""
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r} (kinds: {', '.join(KINDS)})")

    def deco(obj):
        key = name or obj.__name__.lower()
        source = f"{obj.__module__}:{obj.__qualname__}"
        if _current_dist:
            source += f" [{_current_dist}]"
        entry = Entry(kind, key, obj, source)
        version = getattr(obj, "api_version", None)
        if version is not None and version != API_VERSION:
            _REFUSED[(kind, key)] = (f"{kind} plugin {key!r} ({source}) is written for ganforge plugin API "
                                     f"{version}; this ganforge implements API {API_VERSION}: install a version "
                                     "of the plugin package made for it")
        old = _REGISTRY[kind].get(key)
        if old is not None and old.obj is not obj and old.source.split(" [")[0] != source.split(" [")[0]:
            # Two packages claiming one name make recipes that use it ambiguous: remember both, fail on use.
            _CLASHES.setdefault((kind, key), [old]).append(entry)
            return obj
        _REGISTRY[kind][key] = entry
        return obj

    return deco


def request(spec: str) -> None:
    """``ganforge -p SPEC``: load this entry point (by name or distribution) or module explicitly."""
    if spec not in _requested:
        _requested.append(spec)
    if _loaded:
        _load_requested(spec)


def _eps() -> list:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name != BUILTIN, e.name))


def _label(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else ep.name


def _import(module: str, label: str) -> None:
    global _current_dist
    _current_dist = label
    try:
        importlib.import_module(module)
        _tag_untagged(module, label)
    finally:
        _current_dist = None


def load_plugins() -> None:
    """Import the built-ins, every package in the ``ganforge.plugins`` group (unless $GANFORGE_DISABLE_PLUGIN_AUTOLOAD)
    and the ``-p`` requests, once."""
    global _loaded
    if _loaded:
        return
    eps = _eps()
    builtin = [e for e in eps if e.name == BUILTIN]
    if not builtin:
        raise PluginError("built-in plugins not found in entry-point group 'ganforge.plugins': install ganforge "
                          "(pip install -e .) rather than running it from a bare checkout")
    _import(builtin[0].value.split(":")[0], _label(builtin[0]))  # a failure here is ganforge's own bug: raise
    _loaded = True
    if not os.environ.get(AUTOLOAD_OFF):
        for ep in eps:
            if ep.name != BUILTIN:
                _load_third_party(ep)
    for spec in _requested:
        _load_requested(spec)


def _load_third_party(ep) -> None:
    label = _label(ep)
    try:
        _import(ep.value.split(":")[0], label)
    except Exception as e:  # noqa: BLE001 — any error in someone else's package: it must not take the host down
        BROKEN[label] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        _forget(label)  # half an import may have registered some of its plugins: none of them is trusted
        _warn(f"plugin package {label} ({ep.value}) failed to import: {BROKEN[label]}; its plugins are "
              f"unavailable{'' if _debug() else ' (GANFORGE_DEBUG=1 shows the traceback)'}")
        if _debug():
            traceback.print_exc()


def _load_requested(spec: str) -> None:
    """An explicit request fails loudly: the user asked for exactly this."""
    match = [e for e in _eps()
             if spec in (e.name, getattr(getattr(e, "dist", None), "name", None), e.value.split(":")[0])]
    module, label = (match[0].value.split(":")[0], _label(match[0])) if match else (spec, f"-p {spec}")
    try:
        _import(module, label)
    except Exception as e:  # noqa: BLE001
        if _debug():
            traceback.print_exc()
        raise PluginError(f"-p {spec}: cannot load plugin module {module!r}: {type(e).__name__}: {e}") from None


def import_recipe_module(spec: str, where: str) -> None:
    """A recipe's ``imports:`` entry: a dotted module path or an absolute .py path (config.py resolves relative
    ones). Files get a module name derived from their full path, so two recipes' ``plugins.py`` never collide
    and every rank imports the same file under the same name."""
    load_plugins()
    if spec.endswith(".py"):
        import hashlib
        import importlib.util
        from pathlib import Path

        path = Path(spec)
        if not path.is_file():
            raise PluginError(f"{where}: no such file {path}")
        name = f"ganforge_imports.{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        global _current_dist
        _current_dist = f"imports: {path}"
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001
            del sys.modules[name]
            raise PluginError(f"{where}: {path} failed to import: {type(e).__name__}: {e}") from None
        finally:
            _current_dist = None
        return
    try:
        _import(spec, f"imports: {spec}")
    except ModuleNotFoundError as e:
        raise PluginError(f"{where}: no module named {e.name!r} (a dotted module path importable here, or a "
                          ".py file relative to the recipe)") from None
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"{where}: module {spec!r} failed to import: {type(e).__name__}: {e}") from None


def _forget(label: str) -> None:
    for table in _REGISTRY.values():
        for key, e in list(table.items()):
            if e.dist == label:
                del table[key]
    for (kind, key), contenders in list(_CLASHES.items()):
        left = [e for e in contenders if e.dist != label]
        if len(left) > 1:
            _CLASHES[(kind, key)] = left
        else:  # the clash was with the package just dropped: the other registration stands alone again
            del _CLASHES[(kind, key)]
            if left:
                _REGISTRY[kind][key] = left[0]


def _tag_untagged(module: str, dist: str) -> None:
    """Plugins imported directly (``import ganforge_plugins.losses``) before discovery registered without their
    distribution; credit them to the entry point whose package holds them."""
    for table in _REGISTRY.values():
        for key, e in list(table.items()):
            if "[" not in e.source and (e.obj.__module__ == module or e.obj.__module__.startswith(module + ".")):
                table[key] = Entry(e.kind, e.name, e.obj, f"{e.source} [{dist}]")


def entries(kind: str | None = None) -> list[Entry]:
    load_plugins()
    kinds = [kind] if kind else list(KINDS)
    return [e for k in kinds for e in sorted(_REGISTRY[k].values(), key=lambda e: e.name)]


def clashes() -> dict[tuple[str, str], list[Entry]]:
    load_plugins()
    return dict(_CLASHES)


def refused() -> dict[tuple[str, str], str]:
    load_plugins()
    return dict(_REFUSED)


def get(kind: str, name: str, where: str = "") -> Entry:
    load_plugins()
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r} (kinds: {', '.join(KINDS)})")
    loc = f"{where}: " if where else ""
    if (kind, name) in _CLASHES:
        both = " and ".join(e.source for e in _CLASHES[(kind, name)])
        raise PluginError(f"{loc}{kind} plugin {name!r} is registered more than once: by {both}; uninstall one, "
                          f"or set {AUTOLOAD_OFF}=1 and load the one you want with `ganforge -p PACKAGE`")
    if (kind, name) in _REFUSED:
        raise PluginError(f"{loc}{_REFUSED[(kind, name)]}")
    table = _REGISTRY[kind]
    if name not in table:
        close = difflib.get_close_matches(str(name), table.keys(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        avail = ", ".join(sorted(table)) or "none registered"
        broken = "".join(f"; plugin package {d} failed to import ({why}) and may provide it"
                         for d, why in BROKEN.items())
        raise PluginError(f"{loc}unknown {kind} plugin {name!r}{hint} (available: {avail}){broken}")
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
