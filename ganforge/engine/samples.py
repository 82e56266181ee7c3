"""Sample grids: fixed latents through G_ema, tiled into one PNG (uint8 done here, as wandb wants)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import GanforgeError
from .statefile import describe


def to_uint8_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] -> ``[H', W', 3]`` uint8 tile grid."""
    images = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = images.shape
    if c == 1:
        images = images.expand(n, 3, h, w)
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.full((3, ncol * (h + pad) + pad, nrow * (w + pad) + pad), -1.0)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y:y + h, x:x + w] = images[i, :3]
    return ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def save_grid(images: torch.Tensor, path: Path) -> np.ndarray:
    arr = to_uint8_grid(images)
    tmp = path.with_suffix(".tmp.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp)
        tmp.replace(path)  # readers (a notebook, rsync) never see half a PNG
    except OSError as e:  # disk full, read-only run dir: one line naming the file, no half-written PNG left
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise GanforgeError(f"cannot write sample grid {path}: {describe(e)}") from None
    return arr
