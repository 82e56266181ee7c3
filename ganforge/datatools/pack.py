"""``ganforge data pack SRC OUT``: a folder of images -> webdataset tar shards + ``manifest.json``.

* Every file under SRC (recursive, sorted) is considered. Files without an image extension and images that do
  not fully decode are skipped, never fatal: each is listed with its reason in the manifest and counted on the
  console. A dataset with zero readable images is an error.
* Labels: with ``labels=None`` (auto) images are labelled by their top-level subfolder when every image lies
  in one (``SRC/cat/x.jpg`` -> class of "cat"; classes sorted by name, indices 0..K-1 in ``cls``).
* Order: shuffled with ``seed`` by default, so a shard is a random subset rather than one class or one photo
  session; the order (hence every shard's contents) does not depend on the number of workers.
* Images are decoded and re-encoded in worker processes; the parent only writes tar members, in order.
  Without ``resolution``, a file already in the target format (and upright, RGB or L) is stored byte for
  byte: re-encoding a JPEG would only lose quality.
* Output is written to a temporary directory beside OUT and renamed into place at the end: an interrupted pack
  never leaves something that looks like a finished dataset. Shards carry mtime 0: the same input and options
  give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

from PIL import Image, ImageOps

from ..errors import DataError
from .imaging import resize_crop, resize_pad, to_rgb

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_WINDOW = 2048  # tasks in flight: bounds memory (futures + encoded results) for millions of files
_EXIF_ORIENTATION = 0x0112


@dataclass
class PackOptions:
    shard_size: int = 1000  # samples per shard
    resolution: int | None = None  # square side; None keeps each image's size
    fit: str = "crop"  # crop (resize shorter side, centre crop) | pad (resize longer side, black borders)
    format: str = "jpg"  # jpg | png | webp
    quality: int = 95  # jpg/webp quality; png is lossless and ignores it
    workers: int = 1
    labels: bool | None = None  # None: by subfolder when every image is in one
    shuffle: bool = True
    seed: int = 0
    overwrite: bool = False  # replace an existing pack (a folder holding manifest.json)
    prefix: str = "shard"

    def check(self) -> None:
        problems = [
            (self.shard_size < 1, f"--shard-size must be >= 1, got {self.shard_size}"),
            (self.resolution is not None and self.resolution < 1, f"--resolution must be >= 1, got {self.resolution}"),
            (self.fit not in ("crop", "pad"), f"--fit must be crop or pad, got {self.fit!r}"),
            (self.format not in FORMATS, f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}"),
            (not 1 <= self.quality <= 100, f"--quality must be in 1..100, got {self.quality}"),
            (self.workers < 1, f"--workers must be >= 1, got {self.workers}"),
            (not self.prefix or "/" in self.prefix or "%" in self.prefix, f"bad shard prefix {self.prefix!r}"),
        ]
        for bad, msg in problems:
            if bad:
                raise DataError(f"pack: {msg}")


# ------------------------------------------------------------------------------------------------ scanning
def scan(src: str) -> tuple[list[str], list[str]]:
    """(image files, other files) under ``src`` as sorted paths relative to it."""
    images, others = [], []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), src)
            (images if name.lower().endswith(IMAGE_EXTS) else others).append(rel)
    return images, others


def class_names(images: list[str], labels: bool | None, src: str) -> list[str] | None:
    top_level = [p for p in images if os.sep not in p]
    if labels is False or (labels is None and (top_level or not images)):
        return None
    if top_level:
        raise DataError(f"pack: --labels needs every image in a class subfolder, but {os.path.join(src, top_level[0])} "
                        "is directly in SRC")
    return sorted({p.split(os.sep, 1)[0] for p in images})


# -------------------------------------------------------------------------------------------- worker side
def encode_one(path: str, opts: PackOptions) -> tuple[bytes | None, str | None, tuple[int, int] | None]:
    """(encoded bytes, None, size) or (None, reason, None). Runs in a worker process: no shared state."""
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            im.load()  # the full decode: truncated or corrupt files fail here
            if (opts.resolution is None and im.format == FORMATS[opts.format] and im.mode in ("RGB", "L")
                    and orientation == 1):
                with open(path, "rb") as f:
                    return f.read(), None, im.size
            img = to_rgb(ImageOps.exif_transpose(im))  # phone photos store rotation as a tag
        if opts.resolution is not None:
            fit = resize_crop if opts.fit == "crop" else resize_pad
            img = fit(img, opts.resolution)
        buf = io.BytesIO()
        params = {"compress_level": 6} if opts.format == "png" else {"quality": opts.quality}
        img.save(buf, format=FORMATS[opts.format], **params)
        return buf.getvalue(), None, img.size
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        why = str(e).splitlines()[0] if str(e) else ""
        return None, f"{type(e).__name__}: {why}" if why else type(e).__name__, None


def _encode_task(task: tuple[str, PackOptions]):
    return encode_one(*task)


def _results(paths: list[str], opts: PackOptions):
    """Results in input order, ``opts.workers`` processes, at most ``_WINDOW`` tasks in flight."""
    if opts.workers == 1:
        yield from (encode_one(p, opts) for p in paths)
        return
    with ProcessPoolExecutor(opts.workers) as pool:
        for start in range(0, len(paths), _WINDOW):
            window = [(p, opts) for p in paths[start : start + _WINDOW]]
            yield from pool.map(_encode_task, window, chunksize=max(1, min(32, len(window) // (4 * opts.workers))))


# ------------------------------------------------------------------------------------------------- packing
def pack(src: str, out: str, opts: PackOptions | None = None, progress: bool = True) -> dict:
    """Pack ``src`` into shards in ``out``; returns the manifest (also written to ``out/manifest.json``)."""
    import webdataset as wds  # only the parent writes tars; workers need Pillow only
    from tqdm.auto import tqdm

    opts = opts or PackOptions()
    opts.check()
    src, out = os.path.abspath(src), os.path.abspath(out)
    if not os.path.isdir(src):
        raise DataError(f"pack: source folder not found: {src}")
    _check_out(out, opts.overwrite)
    images, others = scan(src)
    if not images:
        raise DataError(f"pack: no image files ({'/'.join(e[1:] for e in IMAGE_EXTS)}) under {src}")
    classes = class_names(images, opts.labels, src)
    if opts.shuffle:
        random.Random(opts.seed).shuffle(images)
    skipped = [{"path": p, "reason": f"not an image ({os.path.splitext(p)[1] or 'no extension'})"} for p in others]

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
    try:
        shards: list[dict] = []
        sizes: Counter = Counter()
        per_class: Counter = Counter()
        class_index = {c: i for i, c in enumerate(classes or [])}
        n = 0  # samples written
        pattern = os.path.join(tmp.replace("%", "%%"), f"{opts.prefix}-%06d.tar")
        bar = tqdm(total=len(images), unit="img", desc="pack", disable=not progress, dynamic_ncols=True)
        with bar, wds.ShardWriter(pattern, maxcount=opts.shard_size, maxsize=float("inf"), verbose=0,
                                  mtime=0) as sink:
            for rel, (data, reason, size) in zip(images, _results([os.path.join(src, p) for p in images], opts)):
                bar.update(1)
                if data is None:
                    skipped.append({"path": rel, "reason": reason})
                    bar.set_postfix(skipped=len(skipped), refresh=False)
                    continue
                sample = {"__key__": f"{n:09d}", opts.format: data, "path.txt": rel}
                if classes is not None:
                    cls = rel.split(os.sep, 1)[0]
                    sample["cls"] = class_index[cls]
                    per_class[cls] += 1
                sink.write(sample)
                n += 1
                name = os.path.basename(sink.fname)
                if not shards or shards[-1]["name"] != name:
                    shards.append({"name": name, "count": 0})
                shards[-1]["count"] += 1
                sizes[f"{size[0]}x{size[1]}"] += 1
        if not shards:
            raise DataError(f"pack: none of the {len(images)} image files under {src} could be read "
                            f"(first: {skipped[len(others)]['path']}: {skipped[len(others)]['reason']})")
        for s in shards:
            s["bytes"] = os.path.getsize(os.path.join(tmp, s["name"]))
        manifest = _manifest(src, opts, shards, sizes, classes, per_class, skipped)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; datasets are usually shared
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed
    return manifest


def _manifest(src, opts, shards, sizes, classes, per_class, skipped) -> dict:
    square = opts.resolution
    if square is None and len(sizes) == 1:
        w, h = map(int, next(iter(sizes)).split("x"))
        square = w if w == h else None
    last = len(shards) - 1
    return {
        "format": "ganforge-pack-v1",
        "source": src,
        "count": sum(s["count"] for s in shards),
        "resolution": square,  # side of every (square) image, or null when sizes differ
        "sizes": dict(sizes.most_common()),
        "classes": classes,
        "class_counts": {c: per_class[c] for c in classes} if classes is not None else None,
        "urls": f"{opts.prefix}-{{000000..{last:06d}}}.tar" if last else shards[0]["name"],
        "shards": shards,
        "skipped_count": len(skipped),
        "skipped": skipped,
        "options": asdict(opts),
    }


def _check_out(out: str, overwrite: bool) -> None:
    if not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return
    if not os.path.isdir(out):
        raise DataError(f"pack: output {out} exists and is not a folder")
    if not overwrite:
        raise DataError(f"pack: output folder {out} is not empty; pass --overwrite to replace a previous pack")
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        raise DataError(f"pack: --overwrite refuses to delete {out}: it is not a ganforge pack (no manifest.json)")


def _install(tmp: str, out: str) -> None:
    """Rename the finished pack into place; a replaced pack is moved aside first and deleted only after."""
    old = None
    if os.path.exists(out) and os.listdir(out):
        old = tempfile.mkdtemp(prefix=os.path.basename(out) + ".old-", dir=os.path.dirname(out))
        os.rename(out, os.path.join(old, "pack"))
    elif os.path.isdir(out):
        os.rmdir(out)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
