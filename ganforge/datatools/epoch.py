"""Epoch mode for evaluation: every sample of the shards exactly once across all ranks and workers.

Training resamples forever (``ganforge.stream``); metrics such as FID over a reference set want each image
once. Design:

* Shards, not samples, are split: reader slot ``g = rank * W + worker`` (``W = max(num_workers, 1)``) reads
  shards ``g, g + S, g + 2S, ...`` of the URL list (``S = world_size * W`` slots). Each shard is read by one
  slot only, so I/O does not grow with the number of readers, and the union over slots is the whole list.
* Fewer shards than slots is refused up front with a DataError naming the counts: a slot with nothing to read
  would leave its rank waiting on the others (the hang webdataset users know). Repack with a smaller
  ``--shard-size`` or use fewer workers.
* Per-slot (hence per-rank) sample counts are uneven when shards are: an evaluation loop must not run a
  collective per batch; gather results once at the end.
* Within a slot, order is shard order then sample order (no shuffling: evaluation wants reproducibility, not
  mixing). Undecodable samples are skipped and counted exactly as in training; the count of skips after a
  slot's last full batch is carried by its last batch, so per-slot sums are exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import DataError
from ..stream import _worker_id
from .shards import Batcher, decode_image, label_of, read_shard, to_array


class EpochStream(torch.utils.data.IterableDataset):
    """Finite, exactly-once batches: ``{"image": float32 [B, C, R, R], "label": int64 [B], "key": [B] str,
    "skipped": n}``; the last batch of each worker may be smaller. Iterate through ``ganforge.stream.make_loader``
    (its worker count must be ``num_workers``); every ``iter()`` is a new epoch over the same samples."""

    def __init__(
        self,
        urls: list[str],
        *,
        batch_size: int,
        resolution: int,
        channels: int = 3,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ):
        super().__init__()
        if not urls:
            raise DataError("no shard URLs to read")
        if batch_size < 1 or resolution < 1 or num_workers < 0:
            raise ValueError(f"bad stream arguments: batch_size={batch_size}, resolution={resolution}, "
                             f"num_workers={num_workers}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.urls = list(urls)
        self.batch_size, self.resolution, self.channels = batch_size, resolution, channels
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        slots = world_size * self.roles
        if len(self.urls) < slots:
            raise DataError(
                f"epoch mode: {len(self.urls)} shard(s) ({self.urls[0]}{' ...' if len(self.urls) > 1 else ''}) "
                f"for {slots} readers ({world_size} rank(s) x {self.roles} worker(s)); every reader needs a "
                "shard: use fewer data workers or repack with a smaller --shard-size"
            )

    @property
    def roles(self) -> int:
        return max(self.num_workers, 1)

    def shards_for(self, worker: int) -> list[str]:
        """The shards worker ``worker`` of this rank reads (every one of them, once)."""
        slots = self.world_size * self.roles
        return self.urls[self.rank * self.roles + worker :: slots]

    def __iter__(self) -> Iterator[dict]:
        mode = "L" if self.channels == 1 else "RGB"
        pending: dict | None = None  # held back one batch so trailing skips can be added to the last one
        images: list[np.ndarray] = []
        labels: list[int] = []
        keys: list[str] = []
        skipped = 0
        to_batch = Batcher()
        for url in self.shards_for(_worker_id(self.roles, "EpochStream")):
            samples, damaged = read_shard(url)
            skipped += damaged
            for sample in samples:
                img = decode_image(sample, self.resolution, mode)
                if img is None:
                    skipped += 1
                    continue
                images.append(to_array(img, False))
                labels.append(label_of(sample))
                keys.append(str(sample.get("__key__")))
                if len(images) == self.batch_size:
                    if pending is not None:
                        yield pending
                    pending = self._batch(to_batch(images), labels, keys, skipped)
                    images, labels, keys, skipped = [], [], [], 0
        if images:
            if pending is not None:
                yield pending
            pending = self._batch(to_batch(images), labels, keys, skipped)
        elif pending is not None:
            pending["skipped"] += skipped
        if pending is not None:
            yield pending

    @staticmethod
    def _batch(images: torch.Tensor, labels, keys, skipped) -> dict:
        return {"image": images, "label": torch.tensor(labels, dtype=torch.int64), "key": list(keys),
                "skipped": skipped}
