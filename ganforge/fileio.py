"""Atomic file writes for what ganforge hands to users (sample outputs, exports, cached features), and where its
machine-wide cache lives."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import GanforgeError


def write_atomic(path: Path, write, error=GanforgeError) -> None:
    """``write(f)`` into a temp file beside ``path``, then rename: a reader (or a second run filling the same cache)
    never sees half a file, and a full disk leaves neither a half file nor the temp behind. A failure is
    ``error("cannot write PATH: reason")``."""
    from .engine.statefile import describe

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise error(f"cannot write {path}: {describe(e)}") from None


def cache_root(cache_dir: str | None = None) -> str:
    """Datasets ganforge writes itself (embedded digits, packs of ``--data`` folders): ``$GANFORGE_CACHE``, else
    ``~/.cache/ganforge``. Shared by every run on the machine, so a dataset is written once."""
    return cache_dir or os.environ.get("GANFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ganforge")
