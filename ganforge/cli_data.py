"""``ganforge data pack`` / ``ganforge data inspect``: build and look at webdataset image shards.

Heavy imports (torch, webdataset) happen inside the commands, so ``ganforge --help`` stays fast. User errors
are DataError (one line naming the file, shard or flag); ``cli.main`` prints them as ``error: ...``, exit 2.
"""

from __future__ import annotations

import json
import os

import click


@click.group()
def data():
    """Pack images into webdataset shards and inspect shards."""


@data.command()
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--shard-size", default=1000, show_default=True, type=int, help="Images per shard.")
@click.option("--resolution", type=int, default=None, help="Resize every image to RESOLUTION x RESOLUTION.")
@click.option("--fit", type=click.Choice(["crop", "pad"]), default="crop", show_default=True,
              help="With --resolution: centre crop, or pad to square with black borders.")
@click.option("--format", "fmt", type=click.Choice(["jpg", "png", "webp"]), default="jpg", show_default=True)
@click.option("--quality", default=95, show_default=True, type=int, help="jpg/webp quality (png is lossless).")
@click.option("--workers", default=None, type=int, help="Encoding processes [default: all CPUs].")
@click.option("--labels/--no-labels", default=None,
              help="Label by top-level subfolder [default: when every image is in a subfolder].")
@click.option("--shuffle/--no-shuffle", default=True, show_default=True, help="Shuffle image order before sharding.")
@click.option("--seed", default=0, show_default=True, type=int, help="Shuffle seed.")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds a previous pack.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pack(src, out, shard_size, resolution, fit, fmt, quality, workers, labels, shuffle, seed, overwrite, quiet):
    """Pack the images under SRC (recursive; jpg/png/webp/bmp) into tar shards in OUT, with OUT/manifest.json."""
    from .datatools.pack import PackOptions
    from .datatools.pack import pack as run_pack

    opts = PackOptions(shard_size=shard_size, resolution=resolution, fit=fit, format=fmt, quality=quality,
                       workers=workers or os.cpu_count() or 1, labels=labels, shuffle=shuffle, seed=seed,
                       overwrite=overwrite)
    m = run_pack(src, out, opts, progress=not quiet)
    size = f"{m['resolution']}x{m['resolution']}" if m["resolution"] else f"{len(m['sizes'])} sizes"
    classes = f", {len(m['classes'])} classes" if m["classes"] is not None else ""
    total = sum(s["bytes"] for s in m["shards"])
    click.echo(f"packed {m['count']} images into {len(m['shards'])} shard(s) in {out} "
               f"({fmt}, {size}{classes}, {total / 1e6:.1f} MB)")
    if m["skipped_count"]:
        click.echo(f"skipped {m['skipped_count']} file(s) (all listed in {os.path.join(out, 'manifest.json')}):")
        for s in m["skipped"][:10]:
            click.echo(f"  {s['path']}: {s['reason']}")
        if m["skipped_count"] > 10:
            click.echo(f"  ... and {m['skipped_count'] - 10} more")
    click.echo(f"urls: {os.path.join(out, m['urls'])}")


@data.command()
@click.argument("urls", nargs=-1, required=True)
@click.option("--grid", default="inspect-grid.png", show_default=True, help="Where to write the sample grid PNG.")
@click.option("--samples", "grid_n", default=16, show_default=True, type=int, help="Images in the grid (0: none).")
@click.option("--quick", is_flag=True, help="Read image headers only (fast; misses truncated image data).")
@click.option("--workers", default=1, show_default=True, type=int, help="Processes reading shards.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def inspect(urls, grid, grid_n, quick, workers, as_json, quiet):
    """Count samples, image sizes and labels in the shards URLS (brace patterns, globs, http(s)://, pipe:)."""
    from .datatools.inspect_shards import format_summary
    from .datatools.inspect_shards import inspect as run_inspect
    from .datatools.shards import expand_urls

    expanded = expand_urls(list(urls), where="inspect")
    summary = run_inspect(expanded, verify=not quick, grid=grid, grid_n=grid_n, workers=workers,
                          progress=not quiet)
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))
