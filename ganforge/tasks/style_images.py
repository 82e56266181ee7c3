"""Images of a style-transfer run: reading the user's files, and the embedded content and style images.

The embedded pair is drawn here rather than shipped as files: a scene with clear shapes and flat colours (so what
the style changes is visible) and a texture of thick, saturated, swirling strokes (so the style is unmistakable).
Both are deterministic, so ``ganforge stylize`` with no arguments gives the same picture everywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from ..errors import GanforgeError

_DRAW = 256  # the embedded images are drawn at this size, then resized like a user's file


def scaled_size(w: int, h: int, size: int | None) -> tuple[int, int]:
    """(w, h) with the longer side ``size`` and the aspect ratio kept; unchanged when ``size`` is None."""
    if size is None:
        return w, h
    scale = size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def to_tensor(img: Image.Image, size: int | None) -> torch.Tensor:
    """PIL image -> ``[1, 3, H, W]`` in [-1, 1], its longer side resized to ``size`` (aspect ratio kept; None: the
    image's own size)."""
    img = img.convert("RGB")  # grey, palette and RGBA (alpha dropped) alike: the extractors take RGB
    if size is not None:
        img = img.resize(scaled_size(*img.size, size), Image.Resampling.LANCZOS)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return (arr / 127.5 - 1).unsqueeze(0).contiguous()


def load_image(path: str, size: int | None, what: str) -> torch.Tensor:
    """A user's image file; a missing or unreadable one is one line naming it and the option."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise GanforgeError(f"{what} image {p}: no such file")
    try:
        with Image.open(p) as img:
            img.load()
            return to_tensor(img, size)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise GanforgeError(f"{what} image {p}: cannot read it as an image ({' '.join(str(e).split())[:160]})") \
            from None


def save_image(img: torch.Tensor, out: Path) -> None:
    """``[1, 3, H, W]`` in [-1, 1] -> an image file (format from the suffix), written atomically: a reader never
    sees half a file. A failure is one line naming ``--out``."""
    arr = ((img[0].float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp)
        tmp.replace(out)
    except (OSError, ValueError) as e:  # ValueError: a suffix PIL has no writer for
        tmp.unlink(missing_ok=True)
        raise GanforgeError(f"--out {out}: cannot write it ({getattr(e, 'strerror', None) or e})") from None


def embedded_content() -> Image.Image:
    """A house under a sun on rolling hills: large flat regions and sharp edges."""
    n = _DRAW
    y, x = np.mgrid[0:n, 0:n] / n
    img = np.zeros((n, n, 3), np.float32)
    img[:] = (np.stack([0.55 + 0.35 * y, 0.75 + 0.2 * y, 0.98 - 0.1 * y], -1))  # sky, lighter to the horizon
    hill = 0.62 + 0.06 * np.sin(2 * math.pi * (x * 1.3 + 0.1)) + 0.03 * np.sin(2 * math.pi * x * 3.7)
    img[y > hill] = (0.25, 0.6, 0.2)
    img[y > hill + 0.18] = (0.18, 0.45, 0.15)
    pil = Image.fromarray((img * 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    d.ellipse((170, 28, 226, 84), fill=(250, 215, 60))  # sun
    d.rectangle((60, 120, 150, 190), fill=(200, 60, 50))  # walls
    d.polygon([(50, 122), (105, 78), (160, 122)], fill=(80, 45, 35))  # roof
    d.rectangle((92, 150, 116, 190), fill=(70, 45, 30))  # door
    d.rectangle((126, 135, 144, 153), fill=(240, 240, 200))  # window
    return pil


def embedded_style() -> Image.Image:
    """Thick swirling strokes in a saturated night palette (deep blue, cobalt, yellow, orange, white)."""
    rng = np.random.default_rng(0)
    palette = [(20, 40, 110), (40, 90, 190), (250, 205, 40), (240, 130, 30), (235, 235, 220), (30, 150, 170)]
    pil = Image.new("RGB", (_DRAW, _DRAW), (15, 25, 70))
    d = ImageDraw.Draw(pil)
    for _ in range(420):
        cx, cy = rng.uniform(-20, _DRAW + 20, size=2)
        r = rng.uniform(6, 40)
        start = rng.uniform(0, 360)
        colour = palette[rng.integers(len(palette))]
        d.arc((cx - r, cy - r, cx + r, cy + r), start, start + rng.uniform(60, 200), fill=colour,
              width=int(rng.integers(3, 8)))
    return pil


def image(path: str | None, size: int, what: str) -> torch.Tensor:
    """The ``what`` ("content" or "style") image at ``size``: the user's file, else the embedded one."""
    if path is not None:
        return load_image(path, size, what)
    return to_tensor(embedded_content() if what == "content" else embedded_style(), size)


# RGB <-> YIQ (NTSC): Y is luminance, I and Q carry the colour
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])


def keep_colours(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The result's luminance with the content's colours (Gatys et al. 2016, "Preserving Color in Neural Artistic
    Style Transfer", luminance-only variant applied to the output): the style's brush strokes, the photo's hues.
    Both ``[B, 3, H, W]`` in [-1, 1]; returns the same."""
    m = _YIQ.to(result)
    yiq_r = torch.einsum("ij,bjhw->bihw", m, (result + 1) / 2)
    yiq_c = torch.einsum("ij,bjhw->bihw", m, (content.to(result) + 1) / 2)
    mixed = torch.cat([yiq_r[:, :1], yiq_c[:, 1:]], dim=1)
    return (torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), mixed) * 2 - 1).clamp(-1, 1)
