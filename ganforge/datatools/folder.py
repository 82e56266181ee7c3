"""``ganforge run RECIPE --data PATH``: train on your own images with one command.

PATH is one of
* a folder of images: packed once (``datatools.pack``, the packer behind ``ganforge data pack``) into webdataset
  shards at the model's resolution, under ``<cache>/packs/<folder>-<R>px-<key>/``. The key hashes the image
  files' relative paths, sizes and mtimes, the resolution and the pack options, so a second run reuses the pack
  and an edited folder gets a new one (and a run dir whose data changed refuses to resume, as for any recipe);
* a folder that ``ganforge data pack`` wrote (it has a ``manifest.json``): its shards, as they are;
* a shard URL pattern or ``.tar`` (anything a recipe's ``urls`` takes): used directly.
Either way the recipe's ``data.source`` becomes a ``webdataset`` block, so the run dir's ``recipe.yaml`` names the
shards it trained on and resumes without ``--data``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re

from ..errors import DataError
from ..fileio import cache_root
from .pack import IMAGE_EXTS, PackOptions, pack, scan

PACK_VERSION = 1  # bump when what a pack holds changes for the same input: it is part of the cache key
_URL_HINTS = ("::", "{", "*", "?", "[", "://")


def _rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _say(msg: str, anyrank: bool = False) -> None:
    if anyrank or _rank0():  # every rank resolves --data; rank 0 talks, or the one rank that packs
        print(msg, flush=True)


def _pack_options(resolution: int, n_images: int) -> PackOptions:
    # A process pool only pays for its start-up beyond a few hundred images.
    workers = max(1, min(os.cpu_count() or 1, n_images // 500))
    return PackOptions(resolution=resolution, workers=workers)


def pack_key(src: str, images: list[str], opts: PackOptions) -> str:
    """What the pack depends on: each image's relative path, size and mtime, plus the options and PACK_VERSION
    (not the folder's location: a copy with the same files shares the pack). Files that are not images do not
    count: the packer skips them anyway."""
    h = hashlib.sha256(json.dumps({"v": PACK_VERSION, "options": {**vars(opts), "workers": None}}).encode())
    for rel in images:
        st = os.stat(os.path.join(src, rel))
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "data"


def _is_url_spec(spec: str) -> bool:
    return spec.startswith("pipe:") or spec.endswith(".tar") or any(h in spec for h in _URL_HINTS)


@contextlib.contextmanager
def _lock(path: str):
    """One packer per pack on a machine: torchrun's ranks all resolve --data, the first packs, the rest wait and
    then find its pack. (Across machines sharing a disk the atomic rename below decides instead.)"""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_pack(src: str, out: str, images: list[str], opts: PackOptions, progress: bool) -> dict:
    manifest_path = os.path.join(out, "manifest.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with _lock(out + ".lock"):
        if not os.path.isfile(manifest_path):
            _say(f"--data: packing {len(images)} images from {src} at {opts.resolution}x{opts.resolution} into "
                 f"{out} (once: later runs reuse it)", anyrank=True)
            try:
                m = pack(src, out, opts, progress=progress)
            except (DataError, OSError) as e:
                if not os.path.isfile(manifest_path):  # not merely another machine's pack that won the rename
                    raise DataError(f"--data: {str(e).removeprefix('pack: ')}") from None
            else:
                skipped = f"; skipped {m['skipped_count']} file(s) (not images, or unreadable): see {manifest_path}"
                _say(f"--data: packed {m['count']} images into {len(m['shards'])} shard(s)"
                     f"{skipped if m['skipped_count'] else ''}", anyrank=True)
                return m
        with open(manifest_path) as f:
            m = json.load(f)
        _say(f"--data: using the pack of {src} in {out} ({m['count']} images, cached)")
        return m


def source_for(spec: str, resolution: int, *, prepare: bool = True, progress: bool = True) -> tuple[dict, str]:
    """(a ``webdataset`` data.source block, a short name for the run) for ``--data spec``. With ``prepare`` false
    (``--dry-run``) everything is checked and the block is the same, but nothing is packed."""
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(path):
        name = _slug(os.path.basename(path))
        manifest = os.path.join(path, "manifest.json")
        if os.path.isfile(manifest):  # already packed by `ganforge data pack`: its shards as they are
            with open(manifest) as f:
                urls = json.load(f).get("urls")
            if not isinstance(urls, str):
                raise DataError(f"--data: {manifest} is not a ganforge pack manifest (no 'urls')")
            return {"type": "webdataset", "urls": os.path.join(path, urls)}, name
        images, _ = scan(path)
        if not images:
            exts = "/".join(e[1:] for e in IMAGE_EXTS)
            raise DataError(f"--data: no image files ({exts}) under {path}")
        opts = _pack_options(resolution, len(images))
        out = os.path.join(cache_root(), "packs", f"{name}-{resolution}px-{pack_key(path, images, opts)}")
        if prepare:
            _ensure_pack(path, out, images, opts, progress)  # only the rank that packs shows a bar
        # a glob, not the manifest's brace pattern: known before packing (--dry-run prints the same recipe), and
        # exact, since the folder is written whole by one rename and keyed on its contents
        return {"type": "webdataset", "urls": os.path.join(out, f"{opts.prefix}-*.tar")}, name
    if _is_url_spec(spec):
        from .shards import expand_urls

        remote = spec.startswith("pipe:") or "://" in spec
        if not remote:  # absolute: the run dir's recipe.yaml must resume from any working directory
            spec = "::".join(os.path.abspath(os.path.expanduser(p.strip())) for p in spec.split("::"))
        expand_urls(spec, where="--data")  # a missing local shard fails now, in one line naming it
        first = spec.split("::")[0].rstrip("/")
        return {"type": "webdataset", "urls": spec}, _slug(os.path.basename(os.path.dirname(first)) or "shards")
    if not os.path.exists(path):
        raise DataError(f"--data: {path}: no such folder")
    raise DataError(f"--data: {path}: expected a folder of images, a `ganforge data pack` folder, or .tar shards")


def use_data(recipe, spec: str, *, prepare: bool = True, rename: bool = True) -> None:
    """Point ``recipe`` (validated) at ``--data spec``, at the resolution it streams at. ``rename``: the run is
    called ``<recipe name>-<data name>`` (runs/dcgan-photos), so training on your images never tries to resume
    the recipe's own run (whose data differs, which resuming refuses)."""
    from ..config import check_plugin_block

    resolution = getattr(recipe, "data_resolution", None)  # each task's recipe says what it streams at
    if resolution is None:
        raise DataError(f"--data: a {recipe.task} recipe reads no data stream (it has no data.source)")
    block, name = source_for(spec, resolution(), prepare=prepare, progress=recipe.log.progress)
    recipe.data.source = check_plugin_block("dataset", block, "data.source")
    if rename:
        recipe.name = f"{recipe.name}-{name}"
