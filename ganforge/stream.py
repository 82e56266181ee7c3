"""The training image stream: webdataset shards -> infinite, deterministic, exactly resumable batches.

Design (every choice below serves determinism, exact resume or "never hang a distributed job"):

* Each rank runs ``W = max(num_workers, 1)`` worker *roles*; role ``k`` of rank ``rank`` is global slot
  ``g = rank * W + k``. Slots never share an RNG, so ranks and workers see different data without any
  coordination, and webdataset's node splitter (which raises at world size > 1) is not used.
* A role runs rounds ``r = 0, 1, 2, ...``. Round ``r`` seeds ``random.Random`` from a stable hash of
  ``(seed, g, r)`` and picks shards: the first uniformly *with replacement* across rounds, then, while the
  round holds fewer than ``shuffle_buffer`` samples, further *distinct* shards. It shuffles the union of those
  shards' samples and draws one x-flip bit per sample, all from that round's RNG. This is the shuffle buffer:
  a batch mixes samples of several shards (shards packed per class would otherwise give one-class batches)
  while the whole round stays a pure function of the seed and the shards' contents. ``shuffle_buffer=0`` (or
  any value not above a shard's size) is one shard per round.
* Resampling means every slot always has data even when there are fewer shards than ``world_size * W``
  slots (a rank without data would hang DDP), and batch counts never differ between ranks (there are no
  epochs to end unevenly). Evaluation wants every sample once instead: ``datatools.epoch.EpochStream``.
* Batches are assembled inside the worker. The torch DataLoader hands batches out round-robin, so loader batch
  ``i`` comes from worker ``i % W``. To resume after ``C`` consumed batches, worker ``w`` plays role
  ``(w + C) % W`` and first fast-forwards past the batches that role already produced (see ``_RoleStream``).

The stream is therefore a pure function of (urls, seed, rank, world_size, num_workers, batch_size,
shuffle_buffer, xflip, resolution, channels), provided shard contents do not change. Resolution and channels
change the pixels but not which sample lands where: progressive growing builds a new stream at the new
resolution with ``start_batch`` = batches consumed and continues the very same sample sequence.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .datatools.shards import IMAGE_KEYS, Batcher, decode_image, expand_urls, label_of, to_array
from .datatools.shards import read_shard as _read_shard
from .errors import DataError, GanforgeError

__all__ = ["ShardStream", "StreamLoader", "make_loader", "expand_urls"]

# A role that sees this many consecutive rounds without a single usable image gives up instead of spinning
# forever (all shards empty or undecodable): a loud error beats a silent hang of the whole job.
_MAX_EMPTY_ROUNDS = 64
# Upper bound on shards mixed into one round, so a huge shuffle_buffer over empty shards cannot loop forever.
_MAX_ROUND_SHARDS = 256


def _round_seed(seed: int, slot: int, rnd: int) -> int:
    # Python's hash() is salted per process, so workers/ranks would disagree; sha256 is stable everywhere.
    digest = hashlib.sha256(f"ganforge-stream-v1:{seed}:{slot}:{rnd}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ---------------------------------------------------------------------------------------------- role stream
@dataclass(frozen=True)
class _ShardSummary:
    n_raw: int  # samples in the shard, usable or not (the shuffle depends only on this)
    bad: frozenset[int]  # indices (in shard order) of samples that fail to decode

    @property
    def usable(self) -> int:
        return self.n_raw - len(self.bad)


Item = tuple[np.ndarray, int]  # (HWC uint8 image, already flipped; label)


class _RoleStream:
    """One role's infinite sample sequence: yields ``(image, label)`` per usable sample, ``None`` per skip.

    Fast-forward (resume): the first ``skip`` usable samples and every skip event before them are swallowed,
    so the first batch after resume sees exactly the samples and skip count of the uninterrupted run. Which
    samples are "usable" can only be known by decoding them, so fast-forward runs the very same decode
    (only the array conversion is saved) -- but once per distinct shard: each fully read shard is summarised
    (size + bad indices), and later rounds made only of summarised shards that lie wholly inside the skipped
    prefix are skipped with no I/O at all. Cost of a resume: at most one read+decode of every distinct shard
    this role drew, and never more than the samples it had consumed (``C / W * batch_size``) plus one round.
    """

    def __init__(self, stream: ShardStream, slot: int, skip: int):
        self.s, self.slot, self.skip = stream, slot, skip
        self.mode = "L" if stream.channels == 1 else "RGB"
        self.summaries: dict[str, _ShardSummary] = {}

    def __iter__(self) -> Iterator[Item | None]:
        empty_rounds = 0
        for rnd in itertools.count():
            rng = random.Random(_round_seed(self.s.seed, self.slot, rnd))
            picks, loaded = self._pick_shards(rng)
            summaries = [self.summaries.get(url) for url in picks]
            usable = sum(s.usable for s in summaries) if None not in summaries else -1
            if 0 <= usable <= self.skip and self.skip > 0:
                # Wholly inside the consumed prefix: no I/O. If the prefix ends exactly at this round's last
                # usable sample, the bad samples after it belong to the next batch's count: replay them.
                trailing = self._trailing_bad(rng, summaries) if self.skip == usable else 0
                self.skip -= usable
                yield from itertools.repeat(None, trailing)
                empty_rounds = empty_rounds + 1 if usable == 0 else 0
                self._check_empty(empty_rounds)
                continue
            used = yield from self._round(rng, picks, loaded, summaries)
            del loaded  # release this round's shards before the next round reads its own (peak: one round)
            empty_rounds = 0 if used else empty_rounds + 1
            self._check_empty(empty_rounds)

    def _pick_shards(self, rng: random.Random) -> tuple[list[str], dict]:
        """This round's shards (URLs, in pick order) and those already read to learn their size."""
        urls, buffer = self.s.urls, self.s.shuffle_buffer
        first = rng.randrange(len(urls))
        picked, chosen, loaded = [urls[first]], {first}, {}
        if buffer <= 0:
            return picked, loaded  # one shard per round: no size needed, nothing read yet
        limit = min(len(urls), _MAX_ROUND_SHARDS)
        held = self._n_raw(urls[first], loaded)
        while held < buffer and len(chosen) < limit:
            i = rng.randrange(len(urls))
            if i in chosen:  # distinct within a round: a small dataset is not repeated inside one buffer
                continue
            chosen.add(i)
            picked.append(urls[i])
            held += self._n_raw(urls[i], loaded)
        return picked, loaded

    def _n_raw(self, url: str, loaded: dict) -> int:
        summary = self.summaries.get(url)
        if summary is not None:
            return summary.n_raw
        if url not in loaded:
            loaded[url] = _read_shard(url)
        return len(loaded[url][0])

    def _check_empty(self, empty_rounds: int) -> None:
        if empty_rounds >= _MAX_EMPTY_ROUNDS:
            raise DataError(
                f"{empty_rounds} rounds of shards in a row held no decodable image ({self.s.urls[0]} ...): "
                f"check the shards contain {'/'.join(IMAGE_KEYS)} images"
            )

    @staticmethod
    def _trailing_bad(rng: random.Random, summaries: list[_ShardSummary]) -> int:
        bad, offset = set(), 0
        for s in summaries:  # positions in the concatenation of the round's shards, as _round numbers them
            bad.update(offset + i for i in s.bad)
            offset += s.n_raw
        order = list(range(offset))
        rng.shuffle(order)  # the same draw _round makes, so the same order
        return next(i for i, pos in enumerate(reversed(order)) if pos not in bad)

    def _round(self, rng: random.Random, picks: list[str], loaded: dict, summaries: list):
        def shard(k: int) -> tuple[list[dict], bool]:
            # Lazy: a summarised shard whose samples all fall in the skipped prefix is never read again.
            if picks[k] not in loaded:
                loaded[picks[k]] = _read_shard(picks[k])
            return loaded[picks[k]]

        sizes = [s.n_raw if s is not None else len(shard(k)[0]) for k, s in enumerate(summaries)]
        entries = [(k, i) for k, n in enumerate(sizes) for i in range(n)]
        order = list(range(len(entries)))
        rng.shuffle(order)
        flips = [rng.random() < 0.5 for _ in order]  # drawn for every sample so flips don't depend on skips
        if self.skip == 0:  # damaged archives count once per read, before their samples
            yield from itertools.repeat(None, sum(shard(k)[1] for k in range(len(picks))))
        bad: list[set[int]] = [set() for _ in picks]
        used = 0
        res, mode, xflip = self.s.resolution, self.mode, self.s.xflip
        for pos, flip in zip(order, flips):
            k, idx = entries[pos]
            summary = summaries[k]
            if summary is not None and idx in summary.bad:
                ok, img = False, None  # known bad: don't decode again
            elif summary is not None and self.skip > 0:
                ok, img = True, None  # known good and about to be skipped: no decode needed
            else:
                img = decode_image(shard(k)[0][idx], res, mode)
                ok = img is not None
            if not ok:
                bad[k].add(idx)
            else:
                used += 1
            if self.skip > 0:
                self.skip -= ok
                continue
            yield (to_array(img, flip and xflip), label_of(shard(k)[0][idx])) if ok else None
        for k, url in enumerate(picks):
            if summaries[k] is None:
                self.summaries[url] = _ShardSummary(sizes[k], frozenset(bad[k]))
        return used


# ------------------------------------------------------------------------------------------------ public API
class ShardStream(torch.utils.data.IterableDataset):
    """Infinite, resampled, deterministic batches:
    ``{"image": float32 [B, C, R, R] in [-1, 1], "label": int64 [B] (-1 = no "cls"), "skipped": n}``.

    ``skipped`` counts the undecodable samples (and damaged archives) this worker passed over since its
    previous batch; the engine sums it for reporting. ``start_batch`` is the number of batches this rank
    already consumed (resume). ``shuffle_buffer``: samples mixed per round (see the module docstring; memory
    per worker is about that many encoded samples plus one shard). Iterate it through ``make_loader``: its
    worker count must be ``num_workers``.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        batch_size: int,
        resolution: int,
        channels: int = 3,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        start_batch: int = 0,
        xflip: bool = False,
        shuffle_buffer: int = 0,
    ):
        super().__init__()
        if not urls:
            raise DataError("no shard URLs to stream from")
        if batch_size < 1 or resolution < 1 or num_workers < 0 or start_batch < 0 or shuffle_buffer < 0:
            raise ValueError(
                f"bad stream arguments: batch_size={batch_size}, resolution={resolution}, "
                f"num_workers={num_workers}, start_batch={start_batch}, shuffle_buffer={shuffle_buffer}"
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.urls = list(urls)
        self.batch_size, self.resolution, self.channels = batch_size, resolution, channels
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers, self.start_batch, self.xflip = num_workers, start_batch, xflip
        self.shuffle_buffer = shuffle_buffer

    @property
    def roles(self) -> int:
        return max(self.num_workers, 1)

    def role_skip(self, role: int) -> int:
        """Batches role ``role`` produced among the first ``start_batch`` (those with index i % W == role)."""
        c, w = self.start_batch, self.roles
        return (c - role + w - 1) // w if c > role else 0

    def __iter__(self) -> Iterator[dict]:
        worker = _worker_id(self.roles, "ShardStream")
        role = (worker + self.start_batch) % self.roles
        samples = _RoleStream(self, self.rank * self.roles + role, self.role_skip(role) * self.batch_size)
        images: list[np.ndarray] = []
        labels: list[int] = []
        skipped = 0
        to_batch = Batcher()
        for item in samples:
            if item is None:
                skipped += 1
                continue
            images.append(item[0])
            labels.append(item[1])
            if len(images) == self.batch_size:
                yield {"image": to_batch(images), "label": torch.tensor(labels, dtype=torch.int64),
                       "skipped": skipped}
                images, labels, skipped = [], [], 0


def _worker_id(roles: int, what: str) -> int:
    info = torch.utils.data.get_worker_info()
    worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
    if n != roles:
        # Roles are laid out for `num_workers` round-robin workers; any other count breaks determinism.
        raise RuntimeError(f"{what} built for {roles} worker(s) but iterated by {n}; use make_loader")
    return worker


# ---------------------------------------------------------------------------------------------------- loader
class _OneLineErrors:
    """Iterator wrapper: a user error raised in a worker comes back from torch as "Caught DataError in
    DataLoader worker process 0. Original Traceback ..."; restore the one-line message the CLI prints."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.it)
        except GanforgeError as e:
            msg = str(e)
            if not msg.startswith("Caught ") or "Original Traceback" not in msg:
                raise
            last = [line for line in msg.splitlines() if line.strip()][-1]
            raise type(e)(last.split(f"{type(e).__name__}: ", 1)[-1]) from None


class StreamLoader(torch.utils.data.DataLoader):
    """DataLoader whose iterators re-raise workers' user errors as one line (see ``_OneLineErrors``)."""

    def __iter__(self):
        return _OneLineErrors(super().__iter__())  # eager: the caller's RNG fork covers the worker seeding


def make_loader(stream) -> StreamLoader:
    """A DataLoader over ``stream`` (a ShardStream or an EpochStream). Each ``iter()`` restarts the stream:
    at ``start_batch`` for a ShardStream, at the first sample for an EpochStream.

    Not for ``accelerator.prepare``: Accelerate would re-shard or dispatch this already per-rank stream.
    ``in_order`` (the default) is what makes batch ``i`` come from worker ``i % W``; resume depends on it.
    """
    workers = stream.num_workers
    return StreamLoader(
        stream,
        batch_size=None,  # batches are built in the workers
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )
