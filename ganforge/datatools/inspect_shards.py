"""``ganforge data inspect URLS``: what is in a set of shards -- counts, image sizes, labels, a sample grid.

Reads shards with the training stream's own reader and decoder (``datatools.shards``), so "unreadable" here is
exactly what training will skip (and count in ``data_skipped``). ``verify=False`` only parses image headers:
much faster, but a truncated image with an intact header then counts as readable.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from .shards import decode_image, image_bytes, label_of, read_shard, to_array, to_batch


def shard_stats(url: str, verify: bool = True) -> dict:
    """Counts for one shard. Runs in a worker process: plain data in, plain data out."""
    samples, damaged = read_shard(url)
    sizes: Counter = Counter()
    labels: Counter = Counter()
    unreadable = 0
    for sample in samples:
        size = None
        if verify:
            img = decode_image(sample, None)
            size = img.size if img is not None else None
        elif (data := image_bytes(sample)) is not None:
            try:
                size = Image.open(io.BytesIO(data)).size  # header only
            except Exception:
                size = None
        if size is None:
            unreadable += 1
            continue
        sizes[f"{size[0]}x{size[1]}"] += 1
        labels[label_of(sample)] += 1
    return {"url": url, "samples": len(samples), "unreadable": unreadable, "damaged": damaged,
            "sizes": sizes, "labels": labels}


def _stats_task(task: tuple[str, bool]) -> dict:
    return shard_stats(*task)


def inspect(urls: list[str], *, verify: bool = True, grid: str | None = None, grid_n: int = 16, workers: int = 1,
            progress: bool = True) -> dict:
    """Summary of ``urls`` (already expanded); writes a grid PNG of the first ``grid_n`` readable samples to
    ``grid`` when given."""
    from tqdm.auto import tqdm

    tasks = [(u, verify) for u in urls]
    bar = tqdm(total=len(urls), unit="shard", desc="inspect", disable=not progress, dynamic_ncols=True)
    per_shard = []
    with bar:
        if workers > 1 and len(urls) > 1:
            with ProcessPoolExecutor(min(workers, len(urls))) as pool:
                for stats in pool.map(_stats_task, tasks):
                    per_shard.append(stats)
                    bar.update(1)
        else:
            for task in tasks:
                per_shard.append(_stats_task(task))
                bar.update(1)
    sizes: Counter = Counter()
    labels: Counter = Counter()
    for s in per_shard:
        sizes.update(s["sizes"])
        labels.update(s["labels"])
    unlabelled = labels.pop(-1, 0)
    summary = {
        "shards": len(urls),
        "samples": sum(s["samples"] for s in per_shard),
        "images": sum(sizes.values()),
        "unreadable": sum(s["unreadable"] for s in per_shard),
        "damaged_shards": [s["url"] for s in per_shard if s["damaged"]],
        "per_shard": {s["url"]: s["samples"] for s in per_shard},
        "sizes": dict(sizes.most_common()),
        "labels": {str(k): labels[k] for k in sorted(labels)},
        "unlabelled": unlabelled,
        "class_names": _class_names(urls),
        "grid": None,
    }
    if grid and grid_n > 0 and summary["images"]:
        summary["grid"] = _write_grid(urls, grid, grid_n, sizes)
    return summary


def _class_names(urls: list[str]) -> list[str] | None:
    """Class names from the ``manifest.json`` that ``ganforge data pack`` wrote beside local shards, if any."""
    folders = {os.path.dirname(u) for u in urls if os.path.isabs(u)}
    if len(folders) != 1:
        return None
    try:
        with open(os.path.join(folders.pop(), "manifest.json")) as f:
            classes = json.load(f).get("classes")
    except (OSError, ValueError, AttributeError):
        return None
    return classes if isinstance(classes, list) else None


def _write_grid(urls: list[str], path: str, n: int, sizes: Counter) -> str:
    from ..engine.samples import save_grid

    w, h = map(int, sizes.most_common(1)[0][0].split("x"))
    tile = max(8, min(128, w, h))  # big enough to judge, small enough that the grid stays a glance
    arrays = []
    for url in urls:
        for sample in read_shard(url)[0]:
            img = decode_image(sample, tile)
            if img is not None:
                arrays.append(to_array(img, False))
            if len(arrays) == n:
                break
        if len(arrays) == n:
            break
    save_grid(to_batch(arrays), Path(path))
    return os.path.abspath(path)


def format_summary(s: dict) -> str:
    """The human-readable report ``ganforge data inspect`` prints."""
    def name(url):
        return url.rsplit("/", 1)[-1]

    def listing(items, limit):
        items = list(items)
        return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")

    shards = list(s["per_shard"])
    lines = [f"shards:      {s['shards']} ({name(shards[0])}{' ... ' + name(shards[-1]) if len(shards) > 1 else ''})",
             f"samples:     {s['samples']} ({s['images']} readable images, {s['unreadable']} unreadable)"]
    if s["damaged_shards"]:
        lines.append(f"damaged:     {len(s['damaged_shards'])} truncated or corrupt archive(s): "
                     + listing(map(name, s["damaged_shards"]), 5))
    lines.append("resolutions: " + (listing((f"{k}: {v}" for k, v in s["sizes"].items()), 8) or "none"))
    names = s.get("class_names") or []

    def label(k):
        i = int(k)
        return f"{k} {names[i]}" if 0 <= i < len(names) else k

    if s["labels"]:
        lines.append(f"labels:      {len(s['labels'])} classes ("
                     + listing((f"{label(k)}: {v}" for k, v in s["labels"].items()), 20) + ")"
                     + (f"; {s['unlabelled']} unlabelled" if s["unlabelled"] else ""))
    else:
        lines.append("labels:      none (no 'cls' entries)")
    if s["grid"]:
        lines.append(f"grid:        {s['grid']}")
    return "\n".join(lines)
