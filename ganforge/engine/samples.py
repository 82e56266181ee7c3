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
    """``[N, C, H, W]`` in [-1, 1] -> ``[H', W', 3]`` uint8 tile grid (``nrow`` images per row, default square)."""
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(-1, 1)[:, :3]
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images, nrow=nrow, padding=pad, pad_value=-1.0)  # grey is repeated to RGB
    if len(images) == 1 and pad:  # make_grid returns a lone image unpadded; a 1-image grid keeps the frame
        grid = torch.nn.functional.pad(grid.expand(3, -1, -1), (pad,) * 4, value=-1.0)
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
