"""What every extractor does the same way: checksums of weight files, and images in [-1, 1] to 3 channels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

_SHA_CACHE: dict[tuple, str] = {}


def sha256_of(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): an 87 MB file costs ~0.3 s once per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def rgb01(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1|3, H, W]`` in [-1, 1] -> float32 ``[B, 3, H, W]`` in [0, 1] (grey repeated to RGB)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got {tuple(images.shape)}")
    x = ((images.float() + 1) / 2).clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
