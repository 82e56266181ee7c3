"""Paths of scheduled scalars: the engine's (``ema_kimg``, ``g_opt.beta2``/``d_opt.beta2``) and plugins'
(``regularizers[0].gamma``, ``augment.p``, ``loss.<attr>``).

A plugin opts in by naming the attribute in ``schedulable``; anything else is refused in the pre-flight with a
line naming the path, so a typo never silently schedules nothing.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

_PATH = re.compile(r"^(loss|balancer|augment|regularizers\[(\d+)\])\.([A-Za-z_]\w*)$")
BETA2_PATHS = {"g_opt.beta2": "G", "d_opt.beta2": "D"}  # Adam's beta2 of either network (R3GAN's schedule)
ENGINE_VALUES = ("ema_kimg", *BETA2_PATHS)


def resolve_target(components, path: str):
    """(plugin object, attribute) for ``path``; ``components`` has loss, balancer, augment, regularizers."""
    m = _PATH.match(path)
    where = f"schedule.values.{path}"
    if m is None:
        raise ConfigError(f"{where}: expected one of {', '.join(ENGINE_VALUES)} or "
                          "'<loss|balancer|augment|regularizers[i]>.<attribute>'")
    block, index, attr = m.group(1), m.group(2), m.group(3)
    if index is not None:
        regs = components.regularizers
        if int(index) >= len(regs):
            raise ConfigError(f"{where}: the recipe has {len(regs)} regularizer(s)")
        obj = regs[int(index)]
    else:
        obj = getattr(components, block)
        if obj is None:
            raise ConfigError(f"{where}: the recipe has no {block} block")
    allowed = tuple(getattr(obj, "schedulable", ()))
    if attr not in allowed:
        raise ConfigError(f"{where}: {type(obj).__name__} does not declare {attr!r} schedulable "
                          f"(schedulable: {', '.join(allowed) or 'none'})")
    return obj, attr
