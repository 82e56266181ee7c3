"""Tasks: what is trained (modules, optimizers, phases, checkpointed state, what a sample is).

A recipe names its task with a top-level ``task:`` key (absent: ``gan``). Each task brings the function that
validates its recipe and the one that builds its components; config.py and build.py look them up here, so neither
the engine nor ``ganforge run`` ever tests which task a run is.
"""

from __future__ import annotations

import difflib
import importlib

from ..errors import ConfigError

# task -> (recipe validator, components builder), as "module:function" (imported on use: a GAN run never
# imports the style-transfer code, and the reverse)
TASKS = {
    "gan": ("ganforge.config:validate_gan", "ganforge.build:build_gan"),
    "style_transfer": ("ganforge.tasks.style_recipe:validate", "ganforge.tasks.style:build"),
    "fast_style": ("ganforge.tasks.fast_style_recipe:validate", "ganforge.tasks.fast_style:build"),
}


def _resolve(spec: str):
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)


def _entry(task) -> tuple[str, str]:
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), TASKS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"task: unknown task {task!r}{hint} (tasks: {', '.join(TASKS)})")
    return TASKS[task]


def validator(task: str):
    return _resolve(_entry(task)[0])


def builder(task: str):
    return _resolve(_entry(task)[1])
