"""Contract of kind ``dataset``: shard URLs that stream as images, or direct batches that resume exactly."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import registry
from ._common import build, checking, options, temp_dir


def check_dataset(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """After ``prepare()``, either ``batches(...)`` yields ``{"image": [B, ...]}`` as a pure function of its
    arguments (resuming exactly at ``start_batch``, different per rank), or ``urls()`` names webdataset shards
    that stream as images ``[B, 3, 16, 16]`` in [-1, 1].

    A source taking ``urls`` gets shards of the built-in ``digits`` dataset written to the temporary directory
    unless ``urls`` is given; one taking ``cache_dir`` writes there (and, taking ``count``, keeps it at 64).
    Returns the built source."""
    from ..stream import ShardStream  # the streaming stack (webdataset) only when a dataset is checked

    with checking("dataset", name) as entry, temp_dir(tmp_path) as tmp:
        opts = options(entry, opts)
        params = registry.plugin_options(entry.obj)
        if "urls" in params and "urls" not in opts:
            digits = registry.build("dataset", {"type": "digits", "count": 64, "shard_size": 32, "resolution": 16,
                                                "cache_dir": str(tmp)})
            digits.prepare()
            opts["urls"] = digits.urls()
        if "cache_dir" in params:
            opts.setdefault("cache_dir", str(tmp))
            if "count" in params:
                opts.setdefault("count", 64)
        src = build(entry, opts)
        src.prepare()
        direct = src.batches(batch_size=4, seed=0, rank=0, world_size=1, start_batch=0)
        if direct is not None:  # a direct-batch source (the lab's 2D mixtures): pure function, exact resume
            first = [b["image"] for b, _ in zip(direct, range(3))]
            resumed = next(iter(src.batches(batch_size=4, seed=0, rank=0, world_size=1, start_batch=2)))
            other_rank = next(iter(src.batches(batch_size=4, seed=0, rank=1, world_size=2, start_batch=0)))
            assert first[0].shape[0] == 4, f"batches(batch_size=4) gave {first[0].shape[0]} samples"
            assert torch.equal(resumed["image"], first[2]), "batches(start_batch=2) must continue at batch 2"
            assert not torch.equal(other_rank["image"], first[0]), "another rank must get other samples"
            return src
        urls = src.urls()
        assert urls, "urls() returned no shard URLs"
        batch = next(iter(ShardStream(urls, batch_size=4, resolution=16)))
        assert batch["image"].shape == (4, 3, 16, 16) and -1 <= batch["image"].min() <= batch["image"].max() <= 1, \
            f"shards must decode to images in [-1, 1]; got {tuple(batch['image'].shape)}"
        return src
