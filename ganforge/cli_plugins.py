"""``ganforge plugins [KIND]`` and ``ganforge plugins show NAME``: what is installed, from where, with which options."""

from __future__ import annotations

import inspect
import typing

import click

from .errors import GanforgeError


def _type_name(hint) -> str:
    if hint is inspect.Parameter.empty:
        return "any"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def options_of(obj) -> list[tuple[str, str, str]]:
    """(name, type, default) of every option a plugin's constructor takes."""
    from . import registry

    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 — a third-party annotation that does not resolve: show the raw one
        hints = {}
    out = []
    for name, p in registry.plugin_options(obj).items():
        hint = hints.get(name, p.annotation)
        default = "(required)" if p.default is inspect.Parameter.empty else repr(p.default)
        out.append((name, _type_name(hint), default))
    return out


def _find(name: str):
    from . import registry

    kind, _, bare = name.rpartition(":")
    kinds = [kind] if kind else list(registry.KINDS)
    if kind and kind not in registry.KINDS:
        raise GanforgeError(f"plugins show {name}: unknown kind {kind!r} (kinds: {', '.join(registry.KINDS)})")
    hits = [(k, registry.get(k, bare)) for k in kinds if any(e.name == bare for e in registry.entries(k))
            or (k, bare) in registry.clashes() or (k, bare) in registry.refused()]
    if not hits:
        everything = [e.name for e in registry.entries()]
        import difflib

        close = difflib.get_close_matches(bare, everything, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GanforgeError(f"plugins show: no plugin named {bare!r}{hint}")
    return hits


def show(name: str) -> None:
    for kind, e in _find(name):
        click.echo(f"{kind} {e.name}")
        click.echo(f"  from     {e.source}")
        click.echo(f"  package  {e.dist or 'unknown'}")
        doc = inspect.getdoc(e.obj) or "(no docstring)"
        click.echo("  " + doc.replace("\n", "\n  "))
        opts = options_of(e.obj)
        click.echo("  options:" if opts else "  options: none")
        for opt, typ, default in opts:
            click.echo(f"    {opt:<18} {typ:<28} {default}")


@click.command("plugins")
@click.argument("what", nargs=-1, metavar="[KIND | show NAME]")
def plugins_cmd(what):
    """List registered plugins (all, or one KIND) with their package, or `show NAME` (or KIND:NAME) with its
    docstring and every option's type and default."""
    from . import registry

    if what[:1] == ("show",):
        if len(what) != 2:
            raise GanforgeError("usage: ganforge plugins show NAME (or KIND:NAME)")
        show(what[1])
        return
    if len(what) > 1 or (what and what[0] not in registry.KINDS):
        raise GanforgeError(f"plugins {' '.join(what)}: expected a kind ({', '.join(registry.KINDS)}) or "
                            "`show NAME`")
    clashes, refused = registry.clashes(), registry.refused()
    for kind in what or registry.KINDS:
        click.echo(f"{kind}:")
        items = registry.entries(kind)
        if not items:
            click.echo("  (none)")
        for e in items:
            flag = "  [CLASH: unusable]" if (kind, e.name) in clashes else (
                "  [REFUSED: plugin API]" if (kind, e.name) in refused else "")
            click.echo(f"  {e.name:<16} {e.source}{flag}  {e.doc}")
    for (kind, name), contenders in clashes.items():
        click.echo(f"clash: {kind} {name!r} registered by " + " and by ".join(c.source for c in contenders)
                   + " (recipes that use it fail; others are unaffected)")
    for why in refused.values():
        click.echo(f"refused: {why}")
    for dist, why in registry.BROKEN.items():
        click.echo(f"broken: plugin package {dist} failed to import: {why}")
