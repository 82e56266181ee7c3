"""``ganforge sample`` / ``ganforge export`` / ``ganforge info``: images and generators out of a finished run.

Every command reads checkpoints through the same safe reader (safetensors + JSON, verified against the manifest)
and builds the architecture through ganforge.build. Heavy imports happen inside the commands, so ``ganforge --help``
stays fast. User errors are GanforgeError: ``cli.main`` prints them as one ``error: ...`` line, exit 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tarfile
from pathlib import Path

import click

from .errors import GanforgeError
from .fileio import write_atomic


def _png_bytes(arr) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tiles(images):
    """``[N, C, H, W]`` in [-1, 1] -> N uint8 ``[H, W, 3]`` arrays, converted exactly as the sample grids are."""
    from .engine.samples import to_uint8_grid

    for img in images:
        yield to_uint8_grid(img[None], nrow=1, pad=0)


def _image_batches(gen, n, seed, truncation, batch):
    """Rendered images, ``batch`` latents at a time (memory bounded by one batch), one image per latent."""
    z = gen.latent(n, seed)
    for i in range(0, n, batch):
        yield _checked(gen, gen.generate(z[i:i + batch], truncation).cpu(), z[i:i + batch])


def _slerp(a, b, t: float):
    """Spherical interpolation of flattened latents (Gaussian latents keep their norm statistics)."""
    import torch

    if t in (0.0, 1.0):  # the end points exactly: a strip's last frame is the next row's first
        return (a if t == 0.0 else b).clone()
    af, bf = a.flatten(1), b.flatten(1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-12)
    omega = torch.acos(cos.clamp(-1, 1))[:, None]
    so = torch.sin(omega)
    lerp = torch.lerp(af, bf, t)
    slerp = (torch.sin((1 - t) * omega) * af + torch.sin(t * omega) * bf) / so.clamp_min(1e-12)
    return torch.where(so > 1e-6, slerp, lerp).view_as(a)


def _gaussian_latents(arch) -> bool:
    from .api import Architecture

    dist = getattr(arch, "latent_distribution", None)
    if dist is not None:
        return dist in ("normal", "gaussian")
    return getattr(type(arch), "sample_latents", Architecture.sample_latents) is Architecture.sample_latents


def _interpolate(gen, pairs, frames, seed, truncation, batch, out: Path) -> tuple:
    """``pairs`` rows of ``frames`` images from the latent of seed s to that of seed s + 1 (s = seed + row)."""
    import torch

    from .engine.samples import to_uint8_grid

    if frames < 2:
        raise GanforgeError(f"--interpolate {frames}: needs at least 2 frames (the two end points)")
    if out.suffix != ".png":
        raise GanforgeError(f"--out {out}: an interpolation strip is a .png file")
    ends = torch.cat([gen.latent(1, seed + i) for i in range(pairs + 1)])
    mix = _slerp if _gaussian_latents(gen.arch) else (lambda a, b, t: torch.lerp(a, b, t))
    ts = [k / (frames - 1) for k in range(frames)]
    z = torch.cat([torch.cat([mix(ends[i:i + 1], ends[i + 1:i + 2], t) for t in ts]) for i in range(pairs)])
    images = torch.cat([_checked(gen, gen.generate(z[i:i + batch], truncation).cpu(), z[i:i + batch])
                        for i in range(0, z.shape[0], batch)])
    arr = to_uint8_grid(images, nrow=frames)
    data = _png_bytes(arr)
    write_atomic(out, lambda f: f.write(data))
    return arr.shape


def _checked(gen, images, z):
    if images.shape[0] != z.shape[0]:
        raise GanforgeError(f"architecture {gen.model_type!r} renders a batch of samples as {images.shape[0]} "
                            "image(s) (a plot), not one per latent; only a grid (--out x.png) fits it")
    return images


def _out_kind(out: str) -> str:
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return "dir"
    suffix = Path(out).suffix.lower()
    if suffix in (".png", ".tar"):
        return suffix[1:]
    raise GanforgeError(f"--out {out}: expected a .png grid, a .tar shard or a directory (ending in /)")


def _write_tar(gen, n, seed, truncation, batch, out: Path, shard_size: int) -> list[Path]:
    """webdataset-style shard(s) of PNGs keyed 000000.png ...; ``out`` itself when n <= shard size, else
    ``<stem>-000000.tar`` ... beside it."""
    width = max(6, len(str(n - 1)))
    nshards = math.ceil(n / shard_size)
    paths = [out] if nshards == 1 else [out.with_name(f"{out.stem}-{k:06d}.tar") for k in range(nshards)]
    tiles = (t for images in _image_batches(gen, n, seed, truncation, batch) for t in _tiles(images))
    def write(f, first: int, count: int):
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for index in range(first, first + count):
                data = _png_bytes(next(tiles))
                member = tarfile.TarInfo(f"{index:0{width}d}.png")
                member.size, member.mtime, member.mode = len(data), 0, 0o644  # deterministic shards
                tar.addfile(member, io.BytesIO(data))

    for k, path in enumerate(paths):
        first = k * shard_size
        write_atomic(path, lambda f, a=first: write(f, a, min(shard_size, n - a)))
    return paths


def _write_dir(gen, n, seed, truncation, batch, out: Path) -> int:
    width, index = max(6, len(str(n - 1))), 0
    for images in _image_batches(gen, n, seed, truncation, batch):
        for tile in _tiles(images):
            data = _png_bytes(tile)
            write_atomic(out / f"{index:0{width}d}.png", lambda f, d=data: f.write(d))
            index += 1
    return index


@click.command("sample")
@click.argument("target", metavar="RUN_OR_CHECKPOINT_OR_EXPORT")
@click.option("--n", "n", default=64, show_default=True, type=int,
              help="Images (or, with --interpolate, interpolation rows).")
@click.option("--seed", default=0, show_default=True, type=int, help="Latent seed (the recipe's seed and "
              "sample.n give the run's own sample grid).")
@click.option("--truncation", type=float, default=None,
              help="Truncation psi (StyleGAN-like architectures) [default: the recipe's sample.truncation_psi].")
@click.option("--out", default="grid.png", show_default=True,
              help="x.png: one grid; DIR/: numbered PNGs; x.tar: webdataset shard(s) of PNGs.")
@click.option("--batch", default=64, show_default=True, type=int, help="Latents per forward pass.")
@click.option("--interpolate", "frames", type=int, default=None, metavar="K",
              help="Write a latent interpolation strip: --n rows of K frames from seed s to s + 1.")
@click.option("--shard-size", default=10000, show_default=True, type=int, help="Images per tar shard.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--ema/--no-ema", default=True, show_default=True, help="G_ema (default) or the raw G.")
def sample(target, n, seed, truncation, out, batch, frames, shard_size, device, ema):
    """Images from a run dir (its newest checkpoint that verifies), a checkpoint dir or an exported file."""
    from .apps.artifacts import resolve, warn_skipped
    from .apps.export import generator
    from .engine.samples import save_grid

    if n < 1:
        raise GanforgeError(f"--n: must be >= 1, got {n}")
    if batch < 1:
        raise GanforgeError(f"--batch: must be >= 1, got {batch}")
    if shard_size < 1:
        raise GanforgeError(f"--shard-size: must be >= 1, got {shard_size}")
    kind = _out_kind(out)
    source = resolve(target)
    warn_skipped(source)
    gen = generator(source, ema=ema, device=device)
    gen.check_truncation(truncation)  # before any work
    out_path = Path(out)
    what = f"step {gen.step}, {gen.kimg:.1f} kimg"
    if frames is not None:
        shape = _interpolate(gen, n, frames, seed, truncation, batch, out_path)
        click.echo(f"wrote {out_path}: {n} x {frames} interpolation ({shape[1]}x{shape[0]} px, {what})")
    elif kind == "png":
        images = gen.sample(n, seed, truncation, batch)
        arr = save_grid(images, out_path)
        click.echo(f"wrote {out_path}: grid of {images.shape[0]} ({arr.shape[1]}x{arr.shape[0]} px, {what})")
    elif kind == "tar":
        paths = _write_tar(gen, n, seed, truncation, batch, out_path, shard_size)
        click.echo(f"wrote {n} images to {paths[0] if len(paths) == 1 else f'{len(paths)} shards {paths[0]} ...'}"
                   f" ({what})")
    else:
        count = _write_dir(gen, n, seed, truncation, batch, out_path)
        click.echo(f"wrote {count} images to {out_path}/ ({what})")


@click.command("export")
@click.argument("target", metavar="RUN_OR_CHECKPOINT")
@click.option("--out", required=True, help="The .safetensors file to write (G and G_ema + metadata).")
def export(target, out):
    """Export G and G_ema of a run's newest verified checkpoint (or of a checkpoint dir) to one .safetensors file,
    loadable with ganforge.load_generator(path)."""
    from .apps.artifacts import resolve, warn_skipped
    from .apps.export import export as do_export

    source = resolve(target, action="export")
    warn_skipped(source)
    meta = do_export(source, Path(out))
    click.echo(f"wrote {out}: {meta['model']['type']} step {meta['step']}, {meta['kimg']:.1f} kimg, stage "
               f"{meta['stage']['resolution']} (alpha {meta['stage']['alpha']:g}), from {source.ckpt_dir}")


def _last_json_line(path: Path) -> dict | None:
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict):
                return row
    return None  # absent, empty, or only a line cut short by a crash


def run_info(run: str) -> dict:
    from .apps.artifacts import ArtifactError, StageInfo, _checkpoint_source, _is_run_dir, load_run_recipe
    from .build import build
    from .engine import checkpoint, statefile

    p = Path(run)
    if not p.exists():
        raise ArtifactError(f"{p}: no such run directory")
    if not p.is_dir() or not _is_run_dir(p) or not (p / "recipe.yaml").is_file():
        raise ArtifactError(f"{p}: not a run directory (needs recipe.yaml)")
    recipe = load_run_recipe(p)
    c = build(recipe, preflight_check=False)
    dirs = checkpoint.checkpoint_dirs(p / "checkpoints")
    ckpts = [{"dir": str(d), "step": int(d.name.split("-")[1]), "reason": statefile.verify(d)} for d in dirs]
    for e in ckpts:
        e["verified"] = e["reason"] is None
    last = next((e for e in reversed(ckpts) if e["verified"]), None)
    step = kimg = stage = None
    if last is not None:
        src = _checkpoint_source(p, Path(last["dir"]), p, verified=True)
        step, kimg = src.step, src.kimg
        st = c.schedule(1).at(kimg)
        stage = StageInfo(int(st.resolution), float(st.alpha))
    best = _last_json_line(p / "checkpoints" / "best.json")
    losses = _last_json_line(p / "log.jsonl")
    if losses is not None:
        losses = {k: v for k, v in losses.items() if k in ("step", "kimg") or k.startswith("loss")}
    return {"run": str(p), "recipe": recipe.name, "model": recipe.model["type"], "resolution": c.arch.resolution,
            "stage": None if stage is None else {"resolution": stage.resolution, "alpha": stage.alpha},
            "step": step, "kimg": kimg, "last_checkpoint": None if last is None else last["dir"],
            "checkpoints": ckpts, "best": best, "metrics": _last_json_line(p / "metrics.jsonl"), "losses": losses}


def _fmt(row: dict) -> str:
    def one(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return " ".join(f"{k}={one(v)}" for k, v in row.items())


@click.command("info")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object).")
def info(run, as_json):
    """What a run holds: recipe, model, step/kimg, last (and best) checkpoint, last metrics and losses."""
    d = run_info(run)
    if as_json:
        click.echo(json.dumps(d, indent=1))
        return
    rows = [("run", d["run"]), ("recipe", d["recipe"]), ("model", f"{d['model']} (resolution {d['resolution']})")]
    if d["last_checkpoint"] is None:
        rows.append(("last checkpoint", "none yet" if not d["checkpoints"] else "none verifies"))
    else:
        st = d["stage"]
        rows += [("step", d["step"]), ("kimg", f"{d['kimg']:.3f}")]
        if st["resolution"] != d["resolution"] or st["alpha"] != 1.0:
            rows.append(("stage", f"{st['resolution']}x{st['resolution']}, alpha {st['alpha']:.3g}"))
        rows.append(("last checkpoint", f"{d['last_checkpoint']} (verified)"))
    for e in d["checkpoints"]:
        if not e["verified"]:
            rows.append(("corrupt", f"{e['dir']}: {e['reason']}"))
    if d["best"] is not None:
        b = d["best"]
        rows.append(("best checkpoint", f"{b.get('dir')} ({b.get('metric')} {b.get('value')} at step {b.get('step')})"))
    if d["metrics"] is not None:
        rows.append(("last metrics", _fmt(d["metrics"])))
    if d["losses"] is not None:
        rows.append(("last losses", _fmt(d["losses"])))
    for k, v in rows:
        click.echo(f"{k + ':':<17}{v}")
