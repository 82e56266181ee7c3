"""Atomic file writes for what ganforge hands to users: sample outputs, exports, cached features."""

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
