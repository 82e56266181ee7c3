"""The training image stream: webdataset shards -> infinite, deterministic, exactly resumable batches.

Design (every choice below serves determinism, exact resume or "never hang a distributed job"):

* Each rank runs ``W = max(num_workers, 1)`` worker *roles*; role ``k`` of rank ``rank`` is global slot
  ``g = rank * W + k``. Slots never share an RNG, so ranks and workers see different data without any
  coordination, and webdataset's node splitter (which raises at world size > 1) is not used.
* A role runs rounds ``r = 0, 1, 2, ...``. Round ``r`` seeds ``random.Random`` from a stable hash of
  ``(seed, g, r)``, picks one shard uniformly *with replacement*, shuffles that shard's samples and draws
  one x-flip bit per sample, all from that round's RNG. Resampling means every slot always has data even when
  there are fewer shards than ``world_size * W`` slots (a rank without data would hang DDP), and batch counts
  never differ between ranks (there are no epochs to end unevenly).
* Batches are assembled inside the worker. The torch DataLoader hands batches out round-robin, so loader batch
  ``i`` comes from worker ``i % W``. To resume after ``C`` consumed batches, worker ``w`` plays role
  ``(w + C) % W`` and first fast-forwards past the batches that role already produced (see ``_RoleStream``).

The stream is therefore a pure function of (urls, seed, rank, world_size, num_workers, batch_size, resolution,
channels, xflip), provided shard contents do not change.
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import braceexpand
import numpy as np
import torch
from PIL import Image
from webdataset.gopen import gopen, gopen_schemes
from webdataset.tariterators import group_by_keys, tar_file_expander

from .errors import DataError

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
# Schemes webdataset's gopen can open; s3:// is deliberately absent (webdataset has no s3 support).
_REMOTE_SCHEMES = {"http", "https", "pipe"} | {k for k in gopen_schemes if k != "__default__"}
# A role that sees this many consecutive rounds without a single usable image gives up instead of spinning
# forever (all shards empty or undecodable): a loud error beats a silent hang of the whole job.
_MAX_EMPTY_ROUNDS = 64


# ----------------------------------------------------------------------------------------------------- URLs
def expand_urls(spec: str | list[str], where: str = "data.urls") -> list[str]:
    """Expand ``spec`` (brace patterns, ``::``-separated or a list; local globs) into shard URLs.

    Local paths must exist (the error names the first missing one); remote URLs are passed through unchecked
    because checking them would cost a request per shard on every rank.
    """
    if isinstance(spec, str):
        parts = spec.split("::")
    elif isinstance(spec, (list, tuple)) and all(isinstance(p, str) for p in spec):
        parts = list(spec)
    else:
        raise DataError(f"{where}: expected a URL pattern string or a list of them, got {spec!r}")
    urls: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            expanded = list(braceexpand.braceexpand(part))
        except Exception as e:  # unbalanced braces and the like
            raise DataError(f"{where}: bad URL pattern {part!r}: {e}") from e
        for url in expanded:
            urls.extend(_check_url(url, where))
    if not urls:
        raise DataError(f"{where}: URL pattern {spec!r} gives no shards")
    return urls


def _check_url(url: str, where: str) -> list[str]:
    scheme = urlparse(url).scheme
    if url.startswith("pipe:") or scheme in _REMOTE_SCHEMES - {"file"}:
        return [url]
    if scheme == "s3":
        raise DataError(f"{where}: {url}: no s3:// support; use 'pipe:aws s3 cp {url} -'")
    if scheme not in ("", "file"):
        raise DataError(f"{where}: {url}: unsupported URL scheme {scheme!r}")
    path = os.path.abspath(os.path.expanduser(url[len("file://") :] if scheme == "file" else url))
    if glob.has_magic(path):
        matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not matches:
            raise DataError(f"{where}: no file matches {url}")
        return matches
    if not os.path.isfile(path):
        raise DataError(f"{where}: shard not found: {path}")
    # Absolute, so workers or later code that change directory still find it.
    return [path]


# --------------------------------------------------------------------------------------------- shard reading
def _read_shard(url: str) -> tuple[list[dict], bool]:
    """All samples of one shard (undecoded) and whether the archive was damaged part-way.

    A shard that yields nothing and errors (missing, not a tar, failing pipe) is a user error: DataError.
    A shard damaged after some members (truncated download) keeps what was read; the damage is reported so
    it can be counted as skipped. Whole shards are held in memory (needed for the full-shard shuffle), which
    bounds useful shard size to what a worker can hold: a few hundred MB.
    """
    errors: list[BaseException] = []

    def handler(exn: BaseException) -> bool:  # webdataset calls this instead of raising; keep going
        errors.append(exn)
        return True

    try:
        stream = gopen(url)
    except FileNotFoundError as e:
        raise DataError(f"shard not found: {url}") from e
    except Exception as e:
        raise DataError(f"cannot open shard {url}: {e}") from e
    try:
        files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        samples = list(group_by_keys(files, handler=handler))
    finally:
        try:
            stream.close()  # for pipe: URLs this waits for the command and raises on a non-zero exit
        except Exception as e:
            errors.append(e)
    if errors and not samples:
        # webdataset appends stream objects to exn.args; the first arg is the readable part.
        first = errors[0]
        why = first.args[0] if first.args else type(first).__name__
        raise DataError(f"cannot read shard {url} (not a tar archive, or its command failed): {why}")
    return samples, bool(errors)


def _round_seed(seed: int, slot: int, rnd: int) -> int:
    # Python's hash() is salted per process, so workers/ranks would disagree; sha256 is stable everywhere.
    digest = hashlib.sha256(f"ganforge-stream-v1:{seed}:{slot}:{rnd}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ------------------------------------------------------------------------------------------------- decoding
def _decode(sample: dict, resolution: int, mode: str) -> Image.Image | None:
    """Decode, convert and resize one sample; None when it has no readable image (it will be skipped)."""
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:  # also accept compound extensions such as "image.png"
        data = next((v for k, v in sample.items() if k.rsplit(".", 1)[-1] in IMAGE_KEYS), None)
    if data is None:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG":
            img.draft(mode, (resolution, resolution))  # DCT-domain downscale: much faster for big JPEGs
        img = img.convert(mode)  # forces a full decode, so truncated files fail here, not later
        w, h = img.size
        if (w, h) != (resolution, resolution):
            # Shorter side to `resolution`, centre crop: done as one resize of the centred square box.
            s = min(w, h)
            box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
            resample = Image.Resampling.LANCZOS if s > resolution else Image.Resampling.BICUBIC
            img = img.resize((resolution, resolution), resample, box=box)
        return img
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return None


def _to_tensor(img: Image.Image, flip: bool) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if flip:
        arr = arr[:, ::-1]
    t = torch.from_numpy(arr.transpose(2, 0, 1).copy())  # copy: PIL's buffer is read-only
    return t.to(torch.float32).div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------------------- role stream
@dataclass(frozen=True)
class _ShardSummary:
    n_raw: int  # samples in the shard, usable or not (the shuffle depends only on this)
    bad: frozenset[int]  # indices (in shard order) of samples that fail to decode

    @property
    def usable(self) -> int:
        return self.n_raw - len(self.bad)


class _RoleStream:
    """One role's infinite sample sequence: yields an image tensor per usable sample, ``None`` per skip.

    Fast-forward (resume): the first ``skip`` usable samples and every skip event before them are swallowed,
    so the first batch after resume sees exactly the samples and skip count of the uninterrupted run. Which
    samples are "usable" can only be known by decoding them, so fast-forward runs the very same ``_decode``
    (only the tensor conversion is saved) -- but once per distinct shard: each fully read shard is summarised
    (size + bad indices), and later rounds on a summarised shard that lie wholly inside the skipped prefix
    are skipped with no I/O at all. Cost of a resume: at most one read+decode of every distinct shard this
    role drew, and never more than the samples it had consumed (``C / W * batch_size``).
    """

    def __init__(self, stream: ShardStream, slot: int, skip: int):
        self.s, self.slot, self.skip = stream, slot, skip
        self.mode = "L" if stream.channels == 1 else "RGB"
        self.summaries: dict[str, _ShardSummary] = {}

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        empty_rounds = 0
        for rnd in itertools.count():
            rng = random.Random(_round_seed(self.s.seed, self.slot, rnd))
            url = self.s.urls[rng.randrange(len(self.s.urls))]
            summary = self.summaries.get(url)
            if summary is not None and 0 < self.skip and summary.usable <= self.skip:
                # Wholly inside the consumed prefix: no I/O. If the prefix ends exactly at this round's last
                # usable sample, the bad samples after it belong to the next batch's count: replay them.
                trailing = self._trailing_bad(rng, summary) if self.skip == summary.usable else 0
                self.skip -= summary.usable
                yield from itertools.repeat(None, trailing)
                empty_rounds = empty_rounds + 1 if summary.usable == 0 else 0
                self._check_empty(empty_rounds)
                continue
            used = yield from self._round(rng, url, summary)
            empty_rounds = 0 if used else empty_rounds + 1
            self._check_empty(empty_rounds)

    def _check_empty(self, empty_rounds: int) -> None:
        if empty_rounds >= _MAX_EMPTY_ROUNDS:
            raise DataError(
                f"{empty_rounds} shards in a row held no decodable image ({self.s.urls[0]} ...): "
                f"check the shards contain {'/'.join(IMAGE_KEYS)} images"
            )

    @staticmethod
    def _trailing_bad(rng: random.Random, summary: _ShardSummary) -> int:
        order = list(range(summary.n_raw))
        rng.shuffle(order)  # the same draw _round makes, so the same order
        return next(i for i, idx in enumerate(reversed(order)) if idx not in summary.bad)

    def _round(self, rng: random.Random, url: str, summary: _ShardSummary | None):
        samples, damaged = _read_shard(url)
        order = list(range(len(samples)))
        rng.shuffle(order)
        flips = [rng.random() < 0.5 for _ in order]  # drawn for every sample so flips don't depend on skips
        if damaged and self.skip == 0:
            yield None
        bad: set[int] = set()
        used = 0
        for idx, flip in zip(order, flips):
            if summary is not None and idx in summary.bad:
                ok, img = False, None  # known bad: don't decode again
            elif summary is not None and self.skip > 0:
                ok, img = True, None  # known good and about to be skipped: no decode needed
            else:
                img = _decode(samples[idx], self.s.resolution, self.mode)
                ok = img is not None
            if not ok:
                bad.add(idx)
            else:
                used += 1
            if self.skip > 0:
                self.skip -= ok
                continue
            yield _to_tensor(img, flip and self.s.xflip) if ok else None
        if summary is None:
            self.summaries[url] = _ShardSummary(len(samples), frozenset(bad))
        return used


# ------------------------------------------------------------------------------------------------ public API
class ShardStream(torch.utils.data.IterableDataset):
    """Infinite, resampled, deterministic: ``{"image": float32 [B, C, R, R] in [-1, 1], "skipped": n}``.

    ``skipped`` counts the undecodable samples (and damaged archives) this worker passed over since its
    previous batch; the engine sums it for reporting. ``start_batch`` is the number of batches this rank
    already consumed (resume). Iterate it through ``make_loader``: its worker count must be ``num_workers``.
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
    ):
        super().__init__()
        if not urls:
            raise DataError("no shard URLs to stream from")
        if batch_size < 1 or resolution < 1 or num_workers < 0 or start_batch < 0:
            raise ValueError(
                f"bad stream arguments: batch_size={batch_size}, resolution={resolution}, "
                f"num_workers={num_workers}, start_batch={start_batch}"
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.urls = list(urls)
        self.batch_size, self.resolution, self.channels = batch_size, resolution, channels
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers, self.start_batch, self.xflip = num_workers, start_batch, xflip

    @property
    def roles(self) -> int:
        return max(self.num_workers, 1)

    def role_skip(self, role: int) -> int:
        """Batches role ``role`` produced among the first ``start_batch`` (those with index i % W == role)."""
        c, w = self.start_batch, self.roles
        return (c - role + w - 1) // w if c > role else 0

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n != self.roles:
            # Roles are laid out for `num_workers` round-robin workers; any other count breaks determinism.
            raise RuntimeError(f"ShardStream built for {self.roles} worker(s) but iterated by {n}; use make_loader")
        role = (worker + self.start_batch) % self.roles
        samples = _RoleStream(self, self.rank * self.roles + role, self.role_skip(role) * self.batch_size)
        batch: list[torch.Tensor] = []
        skipped = 0
        for item in samples:
            if item is None:
                skipped += 1
                continue
            batch.append(item)
            if len(batch) == self.batch_size:
                yield {"image": torch.stack(batch), "skipped": skipped}
                batch, skipped = [], 0


def make_loader(stream: ShardStream) -> Iterable[dict]:
    """A DataLoader over ``stream``. Call ``iter()`` once: every new iterator restarts at ``start_batch``.

    Not for ``accelerator.prepare``: Accelerate would re-shard or dispatch this already per-rank stream.
    ``in_order`` (the default) is what makes batch ``i`` come from worker ``i % W``; resume depends on it.
    """
    workers = stream.num_workers
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,  # batches are built in the workers
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )
