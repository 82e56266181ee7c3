"""On-disk cache of real-image features: one safetensors file per (dataset, extractor, resolution, count).

Computing the reals' features is the expensive, repeated part of an evaluation (the same reals at every
evaluation of every run on a dataset). The file name carries a hash of what produced the features; the file's
metadata repeats it, so a renamed or copied file is not silently used for another dataset. Nothing in it can
execute code (safetensors).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from ..errors import GanforgeError


def save_cached(path: Path, tensors: dict[str, torch.Tensor], ident: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"ident": json.dumps(ident)})
        tmp.replace(path)  # atomic: two runs filling the same cache never read half a file
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        # the evaluation itself succeeded: a cache that cannot be written costs time next time, nothing else
        print(f"warning: cannot cache real features at {path}: {e.strerror or e}")


def load_cached(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise GanforgeError(f"real-feature cache {path} is unreadable ({e}); delete it to recompute") from None
