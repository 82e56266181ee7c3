"""Embedded default dataset: procedurally rendered digits, written once as PNG webdataset shards."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ganforge.api import DatasetSource
from ganforge.errors import DataError
from ganforge.fileio import cache_root  # one cache for the engine's packs and this plugin's shards
from ganforge.registry import register

VERSION = 1  # bump when rendering changes: it is part of the cache directory name
_MESH = 3  # cells per side of the piecewise-affine "handwriting wobble" warp


class DigitRenderer:
    """Renders one digit per call from a numpy Generator: light strokes on a dark, mildly tinted background.

    Drawn on a supersampled canvas with Pillow's built-in scalable font (in every Pillow >= 10.1, unlike
    system fonts), warped by a random affine (rotation, shear, squash) plus a jittered mesh (uneven,
    hand-drawn-looking strokes), then downscaled for anti-aliasing. Digits stay large and centred so a small
    GAN learns them in minutes.
    """

    def __init__(self, resolution: int):
        self.r = resolution
        self.ss = max(1, min(2, 128 // resolution))  # supersampling factor: canvas 64-256 px
        S = self.size = resolution * self.ss
        self.fonts: dict[int, ImageFont.FreeTypeFont] = {}
        # Mesh grid: vertices and the output box of every cell, fixed per resolution.
        g = np.linspace(0, S, _MESH + 1)
        self.grid = np.stack(np.meshgrid(g, g))  # [2 (x, y), n+1 (rows), n+1 (cols)]
        e = [int(v) for v in g]
        self.boxes = [(e[j], e[i], e[j + 1], e[i + 1]) for i in range(_MESH) for j in range(_MESH)]

    def font(self, px: int) -> ImageFont.FreeTypeFont:
        if px not in self.fonts:  # a handful of sizes: cache them, loading a font costs more than drawing
            self.fonts[px] = ImageFont.load_default(size=px)
        return self.fonts[px]

    def __call__(self, rng: np.random.Generator, digit: int) -> Image.Image:
        S = self.size
        mask = Image.new("L", (S, S), 0)
        px = int(S * rng.uniform(0.9, 1.05)) // 4 * 4  # quantised so the font cache stays small
        stroke = int(round(S * rng.uniform(0.008, 0.045)))  # varies the pen weight
        centre = S / 2 + rng.normal(0, S * 0.035, size=2)
        ImageDraw.Draw(mask).text(
            tuple(centre), str(digit), fill=255, font=self.font(px), anchor="mm", stroke_width=stroke
        )
        mask = mask.transform((S, S), Image.Transform.MESH, self._mesh(rng), Image.Resampling.BILINEAR)
        if rng.random() < 0.3:
            mask = mask.filter(ImageFilter.GaussianBlur(self.ss * rng.uniform(0.3, 0.7)))
        box = Image.Resampling.BOX if self.ss > 1 else Image.Resampling.BILINEAR
        mask = mask.resize((self.r, self.r), box)
        bg = rng.uniform(0, 45, size=3) + rng.uniform(0, 15)
        hue = rng.uniform(0.75, 1.0, size=3)
        fg = 255 * hue / hue.max() * rng.uniform(0.85, 1.0)
        # Map mask 0..255 linearly from bg to fg through a [256, 3] lookup table.
        lut = np.rint(bg + np.linspace(0.0, 1.0, 256)[:, None] * (fg - bg)).astype(np.uint8)  # [256, 3]
        return Image.fromarray(lut[np.asarray(mask)], "RGB")

    def _mesh(self, rng: np.random.Generator) -> list:
        # One MESH transform does both warps: each output grid cell samples the source quad found by jittering
        # the grid's interior vertices (wobble) and pushing them through a random affine (exact: an affine map
        # is linear and the mesh interpolates between vertices bilinearly). One resample instead of two.
        S, n = self.size, _MESH
        jit = rng.normal(0, S * 0.025, size=(2, n + 1, n + 1))
        jit[:, [0, -1], :] = 0
        jit[:, :, [0, -1]] = 0
        # Inverse map (output -> input) about the centre: rotation, shear and anisotropic scale.
        a, shear = np.deg2rad(rng.normal(0, 7)), rng.normal(0, 0.12)
        scale = np.array([rng.uniform(0.85, 1.12), rng.uniform(0.9, 1.08)])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        m = rot @ np.array([[1.0, shear], [0.0, 1.0]]) / scale[None, :]
        c = S / 2
        src = np.einsum("ij,jkl->ikl", m, self.grid + jit - c) + c  # [2, n+1, n+1]
        x, y = src.tolist()
        # Quad corners in PIL's order: upper-left, lower-left, lower-right, upper-right.
        quads = [
            (
                x[i][j],
                y[i][j],
                x[i + 1][j],
                y[i + 1][j],
                x[i + 1][j + 1],
                y[i + 1][j + 1],
                x[i][j + 1],
                y[i][j + 1],
            )
            for i in range(n)
            for j in range(n)
        ]
        return list(zip(self.boxes, quads))


@register("dataset", "digits")
class Digits(DatasetSource):
    """Embedded digits 0-9 rendered procedurally (no download); written once per machine as PNG shards."""

    def __init__(
        self,
        resolution: int = 32,
        count: int = 20000,
        seed: int = 0,
        shard_size: int = 5000,
        cache_dir: str | None = None,
    ):
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
        if not isinstance(count, int) or count <= 0:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if not isinstance(shard_size, int) or shard_size <= 0:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.resolution, self.count, self.seed, self.shard_size = resolution, count, seed, shard_size
        # shard_size is not in the name: it changes the files, not the images, and a cache hit stays valid.
        name = f"digits-r{resolution}-n{count}-s{seed}-v{VERSION}"
        self.path = os.path.join(cache_root(cache_dir), "datasets", name)

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, "manifest.json")

    def prepare(self) -> None:
        if os.path.exists(self.manifest_path):
            return
        if os.path.exists(self.path):
            raise DataError(f"{self.path} exists but has no manifest.json: delete it and retry")
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        # Write beside the target, then rename: readers never see a half-written dataset, and when several
        # processes or nodes (shared filesystem) race, exactly one rename wins; the others discard their copy.
        tmp = tempfile.mkdtemp(prefix=os.path.basename(self.path) + ".tmp-", dir=parent)
        try:
            self._write(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must be readable by all
            os.rename(tmp, self.path)
        except OSError:
            if not os.path.exists(self.manifest_path):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op when the rename succeeded

    def _write(self, out: str) -> None:
        rng = np.random.default_rng(self.seed)
        render = DigitRenderer(self.resolution)
        pattern = os.path.join(out.replace("%", "%%"), "digits-%06d.tar")
        shards: list[dict] = []
        # mtime fixed: byte-identical shards on every machine, and no per-member PAX header for a float mtime.
        writer = wds.ShardWriter(pattern, maxcount=self.shard_size, maxsize=float("inf"), verbose=0, mtime=0)
        with writer as sink:
            for i in range(self.count):
                digit = int(rng.integers(10))
                buf = io.BytesIO()
                render(rng, digit).save(buf, format="PNG", compress_level=1)  # fast; tiny images anyway
                sink.write({"__key__": f"{i:08d}", "png": buf.getvalue(), "cls": digit})
                if i % self.shard_size == 0:
                    shards.append({"name": os.path.basename(sink.fname), "count": 0})
                shards[-1]["count"] += 1
        manifest = {
            "name": os.path.basename(self.path),
            "count": self.count,
            "resolution": self.resolution,
            "seed": self.seed,
            "classes": 10,
            "shards": shards,
        }
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)

    def urls(self) -> list[str]:
        try:
            with open(self.manifest_path) as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise DataError(f"digits dataset not prepared at {self.path}: call prepare() first") from None
        return [os.path.join(self.path, s["name"]) for s in manifest["shards"]]
