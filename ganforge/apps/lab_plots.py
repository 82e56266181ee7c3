"""The lab's pictures, drawn with Pillow (a plotting library would be a dependency for two simple charts):
``plot.png``, each score against each swept setting; ``scatter.png``, the samples of 2D-mixture runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import registry

_W, _H, _PAD = 320, 210, 6  # one panel; plot area inside margins below
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 12, 22, 34


def _panel(title: str, labels: list[str], groups: list[np.ndarray], scale: float = 1.0):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (_W, _H), "white")
    d = ImageDraw.Draw(img)
    d.text((_LEFT, 4), title, fill="black")
    finite = np.concatenate([g[np.isfinite(g)] for g in groups]) * scale if groups else np.zeros(0)
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    lo, hi = lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo)
    x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _TOP, _H - _BOTTOM
    d.rectangle([x0, y0, x1, y1], outline=(150, 150, 150))
    to_y = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)
    for v in (lo, (lo + hi) / 2, hi):  # three y ticks are enough to read a trend
        d.text((2, to_y(v) - 5), f"{v:.3g}", fill=(80, 80, 80))
    step = (x1 - x0) / max(len(labels), 1)
    for i, (lab, g) in enumerate(zip(labels, groups)):
        cx = x0 + step * (i + 0.5)
        vals = g[np.isfinite(g)] * scale
        for j, v in enumerate(vals):  # every run: small grey dots, spread a little so seeds do not overlap
            px = cx + (j - (len(vals) - 1) / 2) * 4
            d.ellipse([px - 2, to_y(v) - 2, px + 2, to_y(v) + 2], fill=(160, 160, 160))
        if len(vals):
            m, s = float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            d.line([cx - 10, to_y(m), cx + 10, to_y(m)], fill=(30, 80, 200), width=3)  # mean
            d.line([cx, to_y(m - s), cx, to_y(m + s)], fill=(30, 80, 200), width=1)  # ± std over runs
        d.text((cx - 3 * min(len(lab), 16), y1 + 6), lab[:16], fill="black")
    return img


def settings_plot(results, axes, keys: list[str], path: Path) -> Path:
    """A panel per (score, swept axis): every run's value (grey) and the mean ± std (blue) per setting, the other
    axes and the seeds pooled. A row per score, a column per axis."""
    from PIL import Image

    from .lab_report import _SHOW, per_setting

    sheet = Image.new("RGB", (len(axes) * (_W + _PAD) + _PAD, len(keys) * (_H + _PAD) + _PAD), "white")
    for i, key in enumerate(keys):
        title, scale = _SHOW.get(key, (key, 1))
        for j, axis in enumerate(axes):
            labels, groups = per_setting(results, axis.label, key)
            panel = _panel(f"{title} vs {axis.label}", labels, groups, scale)
            sheet.paste(panel, (_PAD + j * (_W + _PAD), _PAD + i * (_H + _PAD)))
    sheet.save(path)
    return path


def write_scatter(results, source, out: Path, size: int = 256) -> Path:
    """One scatter PNG per run (``scatter/<run>.png``) and an overview (``scatter.png``: a row per combination
    of settings, a column per seed)."""
    from PIL import Image, ImageDraw

    metric = registry.get("metric", "mode_coverage", where="lab").obj.from_source(source)
    extent = float(getattr(source, "extent", np.abs(source.means.numpy()).max() * 1.25))
    (out / "scatter").mkdir(parents=True, exist_ok=True)
    rows: dict[tuple, list] = {}
    for r in sorted(results, key=lambda r: r.spec.index):
        img = metric.plot(r.samples, extent, size)
        Image.fromarray(img).save(out / "scatter" / f"{r.spec.name}.png")
        rows.setdefault(tuple(r.spec.settings.values()), []).append((r, img))
    label_h, pad = 30, 4
    ncol = max(len(v) for v in rows.values())
    sheet = Image.new("RGB", (ncol * (size + pad) + pad, len(rows) * (size + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (combo, items) in enumerate(rows.items()):
        y = pad + i * (size + label_h + pad)
        for j, (r, img) in enumerate(items):
            x = pad + j * (size + pad)
            m = r.metrics
            draw.text((x + 2, y + 2), f"{' / '.join(combo) or 'recipe'} / seed {r.spec.seed}", fill="black")
            draw.text((x + 2, y + 15), f"{m['modes']:.0f} modes, {100 * m['high_quality']:.1f}% HQ", fill="black")
            sheet.paste(Image.fromarray(img), (x, y + label_h))
    path = out / "scatter.png"
    sheet.save(path)
    return path
