"""Pillow-only image helpers shared by the stream's decoder and ``ganforge data pack``.

Kept free of torch and webdataset imports: ``pack`` runs them in worker processes, which may be spawned and
would otherwise pay a torch import each.
"""

from __future__ import annotations

from PIL import Image


def _resample(src: float, dst: int) -> Image.Resampling:
    # LANCZOS when shrinking (no aliasing), BICUBIC when enlarging (LANCZOS rings more there).
    return Image.Resampling.LANCZOS if src > dst else Image.Resampling.BICUBIC


def resize_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Shorter side to ``resolution``, centre crop: done as ONE resize of the centred square box (no second
    resample, no intermediate image)."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return img.resize((resolution, resolution), _resample(s, resolution), box=box)


def resize_pad(img: Image.Image, resolution: int) -> Image.Image:
    """Longer side to ``resolution``, centred on a black square: keeps the whole picture (letterbox)."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    scale = resolution / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(img.mode, (resolution, resolution), 0)
    canvas.paste(img.resize((nw, nh), _resample(max(w, h), resolution)), ((resolution - nw) // 2,
                                                                         (resolution - nh) // 2))
    return canvas


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited over black (plain ``convert`` would expose whatever colour the
    transparent pixels happen to hold)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", img.size, 0)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")
