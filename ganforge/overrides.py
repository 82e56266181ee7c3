"""Command-line overrides (``train.batch_size=64``) applied to a raw recipe mapping, before validation.

A plugin block's options belong to its ``type``: ``data.source.type=webdataset`` on a recipe whose source is
``{type: digits, resolution: 32}`` must not hand ``resolution`` to the webdataset plugin. So an override that
changes a plugin block's type starts the block afresh, keeping only the keys the same command line gives it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import ConfigError

# Dotted paths of plugin blocks (a list's items by index): where ``type`` decides which other keys are valid.
# Not schedule curves: their keys (start, end, ...) keep their meaning across types.
_PLUGIN_BLOCK = re.compile(r"^(model|loss|balancer|augment|data\.source|regularizers\.\d+|metrics\.extractor"
                           r"|metrics\.compute\.\d+|extractor|losses\.\d+)$")  # the last two: style recipes


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. train.batch_size=64)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _get(d, keys: list[str]):
    for k in keys:
        if isinstance(d, list) and k.isdigit() and int(k) < len(d):
            d = d[int(k)]
        elif isinstance(d, dict):
            d = d.get(k)
        else:
            return None
    return d


def split_path(dotted: str) -> list[str]:
    """Dotted override path -> keys. Keys of ``schedule.values`` are themselves paths ("ema_kimg", "g_opt.beta2",
    "regularizers[0].gamma"): one segment for ema_kimg, else two, and what follows is a field of the curve, so
    ``schedule.values.regularizers[0].gamma.end=0.05`` sets that curve's end."""
    keys = dotted.split(".")
    if keys[:2] == ["schedule", "values"] and len(keys) > 3 and keys[2] != "ema_kimg":
        keys = [*keys[:2], f"{keys[2]}.{keys[3]}", *keys[4:]]
    return keys


def set_dotted(d: dict, dotted: str, value, where: str):
    keys = split_path(dotted)
    cur = d
    for i, k in enumerate(keys[:-1]):
        if k.isdigit() and isinstance(cur, list):
            if int(k) >= len(cur):  # an IndexError would surface as a traceback, not as a line naming the path
                raise ConfigError(f"{where}: {'.'.join(keys[:i + 1])}: no such item (the list has {len(cur)})")
            cur = cur[int(k)]
            continue
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(f"{where}: {dotted}: {k} is not a mapping")
        cur = nxt
    cur[keys[-1]] = value


def _given(block: str, key: str, given: list[str]) -> bool:
    """Did an override of this command line set ``block.key`` (itself, inside it, or a mapping holding it)?"""
    path = f"{block}.{key}"
    return any(g == path or g.startswith(path + ".") or block == g or block.startswith(g + ".") for g in given)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides to ``raw`` in order (in place; also returned)."""
    given: list[str] = []
    for ov in overrides:
        key, value = parse_override(ov)
        block, _, last = key.rpartition(".")
        if last == "type" and _PLUGIN_BLOCK.match(block):
            old = _get(raw, block.split("."))
            if isinstance(old, dict) and old.get("type") != value:
                # a different plugin: the previous type's options go, those given on this command line stay
                for k in [k for k in old if k != "type" and not _given(block, k, given)]:
                    del old[k]
        set_dotted(raw, key, value, f"override {ov!r}")
        given.append(key)
    return raw
