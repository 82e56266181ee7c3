"""On-disk cache of real-image features: one safetensors file per (dataset, extractor, resolution, count).

Computing the reals' features is the expensive, repeated part of an evaluation (the same reals at every
evaluation of every run on a dataset). The file name carries a hash of what produced the features; the file's
metadata repeats it, so a renamed or copied file is not silently used for another dataset. Nothing in it can
execute code (safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import GanforgeError


def save_cached(path: Path, tensors: dict[str, torch.Tensor], ident: dict) -> None:
    from safetensors.torch import save

    from ..fileio import write_atomic

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"ident": json.dumps(ident)})
    try:
        write_atomic(path, lambda f: f.write(data))  # two runs filling the same cache never read half a file
    except GanforgeError as e:
        # the evaluation itself succeeded: a cache that cannot be written costs time next time, nothing else
        print(f"warning: real features not cached: {e}")


def load_cached(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise GanforgeError(f"real-feature cache {path} is unreadable ({e}); delete it to recompute") from None
