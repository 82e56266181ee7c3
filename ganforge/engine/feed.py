"""The real-data feed of a run: one stream per schedule stage, its position counted in samples.

Each stage streams at its own resolution and batch size from its own seed (stage 0 uses the run's seed, so a
run without stages sees the very sequence it always did). The position is (stage, samples consumed in that
stage); since a stage has one batch size, samples // batch is the exact batch index to resume at, so a batch
change at a stage boundary keeps resume exact.
"""

from __future__ import annotations

import hashlib

import torch

from ..stream import ShardStream, make_loader


def stage_seed(seed: int, stage: int) -> int:
    if stage == 0:
        return seed
    # stable across processes and runs (Python's hash() is salted per process)
    return int.from_bytes(hashlib.sha256(f"ganforge-stage:{seed}:{stage}".encode()).digest()[:4], "little")


class Feed:
    def __init__(self, source, *, channels: int, seed: int, rank: int, world_size: int, workers: int,
                 xflip: bool, shuffle_buffer: int, device, memory_format=torch.contiguous_format):
        self.source, self.channels, self.seed, self.rank, self.world_size = source, channels, seed, rank, world_size
        self.workers, self.xflip, self.shuffle_buffer = workers, xflip, shuffle_buffer
        self.device, self.memory_format = device, memory_format
        self.stage = None
        self.batch_size = 0
        # counters (checkpointed through state_dict): stage the position refers to, samples taken in it,
        # undecodable samples skipped (this rank)
        self.pos_stage, self.samples, self.skipped = 0, 0, 0
        self._iter = None

    def open(self, stage: int, resolution: int, batch_size: int) -> None:
        """Start (or continue, after a resume) the stream of ``stage``."""
        if stage != self.pos_stage:
            self.pos_stage, self.samples = stage, 0  # a new stage starts its own stream at its beginning
        self.stage, self.batch_size = stage, batch_size
        start = self.samples // batch_size
        seed = stage_seed(self.seed, stage)
        direct = self.source.batches(batch_size=batch_size, seed=seed, rank=self.rank,
                                     world_size=self.world_size, start_batch=start)
        if direct is not None:
            self._iter = iter(direct)
            return
        stream = ShardStream(self.source.urls(), batch_size=batch_size, resolution=resolution,
                             channels=self.channels, seed=seed, rank=self.rank, world_size=self.world_size,
                             num_workers=self.workers, start_batch=start, xflip=self.xflip,
                             shuffle_buffer=self.shuffle_buffer)
        # Not passed through accelerator.prepare: the stream is already split per rank and worker, and
        # Accelerate would shard it a second time (silently dropping data) or dispatch it from rank 0.
        # Creating a DataLoader iterator draws from the global RNG; fork it so a resumed run (which creates the
        # iterator after restoring RNG states) draws the same latents as an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            self._iter = iter(make_loader(stream))

    def use(self, batches, stage: int, batch_size: int) -> None:
        """Feed ``batches`` (an iterator of ``{"image", "skipped"}`` dicts) instead of the stream: in-memory
        batches for benchmarks that time the step without any loader."""
        self.stage, self.pos_stage, self.batch_size, self._iter = stage, stage, batch_size, iter(batches)

    def raw_next(self) -> dict:
        """The next batch dict as the stream yields it (benchmarks capture these)."""
        return next(self._iter)

    def next(self) -> torch.Tensor:
        batch = next(self._iter)
        self.samples += self.batch_size
        self.skipped += int(batch["skipped"])
        real = batch["image"].to(self.device, non_blocking=True)
        return real.to(memory_format=self.memory_format) if real.dim() == 4 else real

    def state_dict(self) -> dict:
        return {"stage": self.pos_stage, "samples": self.samples, "skipped": self.skipped, "workers": self.workers}

    def load_state_dict(self, state: dict) -> None:
        if state["workers"] != self.workers and self.rank == 0:
            print(f"warning: data.workers changed ({state['workers']} -> {self.workers}) since the checkpoint; "
                  "the stream continues in a new random order")
        self.pos_stage, self.samples, self.skipped = state["stage"], state["samples"], state["skipped"]


class NoFeed:
    """The feed of a task that reads no data stream (style transfer optimises one image): nothing to open,
    nothing consumed, nothing skipped. Same interface as ``Feed`` so the loop treats every task alike."""

    def __init__(self):
        self.stage, self.batch_size, self.skipped = None, 0, 0

    def open(self, stage: int, resolution: int, batch_size: int) -> None:
        self.stage, self.batch_size = stage, batch_size

    def next(self):
        raise RuntimeError("this task reads no data stream")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
