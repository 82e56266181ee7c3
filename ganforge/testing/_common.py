"""What every contract check shares: finding the plugin, merging its test options, a temporary directory, and
failure messages that name the plugin (a bare assert from deep inside a check would not say which one)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .. import api, registry


@contextlib.contextmanager
def checking(kind: str, name: str) -> Iterator[registry.Entry]:
    """Look the plugin up (an unknown name raises ganforge's PluginError, with its did-you-mean) and prefix any
    AssertionError raised inside the block with the plugin's kind, name and source."""
    entry = registry.get(kind, name)
    try:
        yield entry
    except AssertionError as e:
        raise AssertionError(f"{kind} plugin {name!r} ({entry.source}): {e}") from e


@contextlib.contextmanager
def temp_dir(tmp_path: str | Path | None) -> Iterator[Path]:
    """The caller's directory (pytest's ``tmp_path``), else a temporary one removed afterwards."""
    if tmp_path is not None:
        yield Path(tmp_path)
        return
    with tempfile.TemporaryDirectory(prefix="ganforge-contract-") as d:
        yield Path(d)


def options(entry: registry.Entry, given: dict) -> dict:
    """The plugin's own ``contract_options`` (kept tiny for CPU) with the caller's options on top."""
    base = getattr(entry.obj, "contract_options", None) or {}
    assert isinstance(base, dict), f"contract_options must be a dict, got {type(base).__name__}"
    return {**base, **given}


def check_api_version(entry: registry.Entry) -> None:
    """A plugin that declares ``api_version`` must target this ganforge's plugin API major version: the host
    refuses it otherwise, and a contract test is the cheapest place to find out."""
    declared = getattr(entry.obj, "api_version", None)
    if declared is None:
        return
    host = api.API_VERSION
    assert isinstance(declared, int) and not isinstance(declared, bool), \
        f"api_version must be an int (the plugin API major version), got {declared!r}"
    assert declared == host, f"declares api_version = {declared}, but this ganforge implements plugin API {host}"


def build(entry: registry.Entry, opts: dict):
    """Construct the plugin the way a recipe would, after the api_version check."""
    check_api_version(entry)
    return entry.obj(**opts)


def assert_checkpointable(state, path: str = "state_dict()") -> None:
    """Plugin state goes into a checkpoint as safetensors + JSON, never a pickle: only tensors, numbers, strings,
    booleans, None, and lists/tuples/dicts (str or int keys) of those can be saved."""
    if state is None or isinstance(state, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(state, (np.generic, np.ndarray)):  # the checkpoint writer keeps numeric numpy values
        kinds = "biufc" if isinstance(state, np.ndarray) else "biuf"
        assert state.dtype.kind in kinds, f"{path}: numpy value of dtype {state.dtype} cannot be checkpointed"
        return
    if isinstance(state, dict):
        for k, v in state.items():
            assert isinstance(k, (str, int)) and not isinstance(k, bool), \
                f"{path}: key {k!r} cannot be checkpointed (only str and int keys)"
            assert_checkpointable(v, f"{path}[{k!r}]")
        return
    assert isinstance(state, (list, tuple)), \
        f"{path}: a {type(state).__qualname__} cannot be checkpointed (tensors, numbers, strings, lists, dicts only)"
    for i, v in enumerate(state):
        assert_checkpointable(v, f"{path}[{i}]")


def assert_has(obj, attrs: tuple[str, ...], base: str) -> None:
    """The engine reads these attributes directly; the base class in ganforge.api supplies defaults for all."""
    missing = [a for a in attrs if not hasattr(obj, a)]
    assert not missing, f"missing {', '.join(missing)} (define them, or subclass ganforge.api.{base})"
