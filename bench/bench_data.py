"""Training-stream throughput (decode + resize + x-flip + to-tensor, batches of 64) on JPEG shards, and the
loader's share of a DCGAN training step.

    python bench/bench_data.py [--rounds 5] [--batches 64] [--workers 1,2] [--dcgan-iters 10] [--dcgan-rounds 3]

Shards: synthetic photo-like RGB images (smooth colour fields + texture + sensor-like noise), JPEG quality 95
with 4:2:0 chroma -- what ``ganforge data pack --format jpg`` writes -- 4096 at 64x64 and 1024 at 256x256,
4 shards each.

1. Per core: the stream in-process (``num_workers=0``, 1 torch thread), ``xflip=True``, the recipe's default
   shuffle buffer (2000). img/s of wall time, and img per CPU-second of this process (``time.process_time``),
   which neighbours on a shared machine disturb far less. "decode only" is the bare decode + resize loop
   (``datatools.shards.decode_image``): the gap to it is the stream's own overhead (tar, shuffle, batching).
2. With N workers: ``make_loader`` with N worker processes, img/s of wall time as the training loop sees it.
3. The recipe's DCGAN (``recipes/dcgan.yaml``: 32x32, widths 32; ``--dcgan-res/--dcgan-width`` change it),
   batch 64, through ``Trainer.train_step`` on the 64x64 shards (decoded to 32x32): the time spent inside
   ``Trainer.next_real`` (waiting for / receiving a batch) as a share of the step, per worker count, and the
   step time of the same trainer fed in-memory batches (that captures CPU contention between the loader and
   training, which a waiting-time share cannot see).
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
BATCH = 64


def photo_like(rng: np.random.Generator, r: int) -> np.ndarray:
    low = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).resize((r, r), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, size=(r // 8, r // 8), dtype=np.uint8)).resize((r, r), Image.BILINEAR)
    arr = np.asarray(low, np.float32) * 0.8 + (np.asarray(mid, np.float32)[..., None] - 128) * 0.3
    return (arr + rng.normal(0, 6, size=arr.shape)).clip(0, 255).astype(np.uint8)


def write_jpeg_shards(root: Path, r: int, count: int, shards: int = 4) -> tuple[str, float]:
    rng = np.random.default_rng(r)
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    with wds.ShardWriter(str(root / "b-%06d.tar"), maxcount=count // shards, verbose=0, mtime=0) as sink:
        for i in range(count):
            buf = io.BytesIO()
            Image.fromarray(photo_like(rng, r)).save(buf, format="JPEG", quality=95)
            total += buf.tell()
            sink.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "cls": i % 10})
    return str(root / f"b-{{000000..{shards - 1:06d}}}.tar"), total / count


def measure(fn, n_images: int, rounds: int) -> tuple[list[float], list[float]]:
    """(img/s wall, img per CPU-second) per round."""
    wall, cpu = [], []
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(n_images / (time.perf_counter() - w0))
        cpu.append(n_images / max(time.process_time() - c0, 1e-9))
    return wall, cpu


def per_core(pattern: str, res: int, batches: int, rounds: int) -> dict:
    from ganforge.datatools.shards import decode_image, expand_urls, read_shard
    from ganforge.stream import ShardStream

    urls = expand_urls(pattern)
    stream = iter(ShardStream(urls, batch_size=BATCH, resolution=res, xflip=True, shuffle_buffer=2000))
    next(stream)  # first round's shard reads out of the clock; later rounds' reads stay in it
    samples = read_shard(urls[0])[0][:1024]
    out = {"wall": [], "cpu": [], "decode_wall": [], "decode_cpu": []}
    for _ in range(rounds):  # interleaved, so both see the same neighbours
        wall, cpu = measure(lambda: [next(stream) for _ in range(batches)], batches * BATCH, 1)
        dwall, dcpu = measure(lambda: [decode_image(s, res) for s in samples], len(samples), 1)
        for k, v in zip(out, (wall, cpu, dwall, dcpu)):
            out[k] += v
    return out


def with_workers(pattern: str, res: int, workers: int, batches: int, rounds: int) -> list[float]:
    from ganforge.datatools.shards import expand_urls
    from ganforge.stream import ShardStream, make_loader

    loader = make_loader(ShardStream(expand_urls(pattern), batch_size=BATCH, resolution=res, xflip=True,
                                     num_workers=workers, shuffle_buffer=2000))
    it = iter(loader)
    for _ in range(2 * workers):  # workers started, first shards read
        next(it)
    wall, _ = measure(lambda: [next(it) for _ in range(batches)], batches * BATCH, rounds)
    return wall  # the workers stop when the iterator is collected


def dcgan_share(pattern: str, workers: int, iters: int, rounds: int, tmp: Path, res: int, width: int) -> dict:
    import yaml
    from accelerate import Accelerator

    from ganforge import config
    from ganforge.build import build
    from ganforge.engine.loop import Trainer

    raw = yaml.safe_load((ROOT / "recipes/dcgan.yaml").read_text())
    raw.update(runs_dir=str(tmp), log={"every": 10**9, "wandb": False, "progress": False})
    raw["data"] = {"source": {"type": "webdataset", "urls": pattern}, "workers": workers, "xflip": True}
    raw["model"].update(resolution=res, g_width=width, d_width=width)
    raw["train"].update(batch_size=BATCH, ema_rampup=None)
    recipe = config.validate(raw)
    trainer = Trainer(build(recipe), Accelerator(cpu=True), tmp / f"run{workers}")
    trainer.start_stream()
    waited = [0.0]
    real_next = trainer.feed.next

    def timed_next():
        t0 = time.perf_counter()
        out = real_next()
        waited[0] += time.perf_counter() - t0
        return out

    trainer.feed.next = timed_next
    for _ in range(2 + workers):  # warm-up: workers started, first shards read
        trainer.train_step()
    steps, shares = [], []
    for _ in range(rounds):
        waited[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(iters):
            trainer.train_step()
        total = time.perf_counter() - t0
        steps.append(total / iters)
        shares.append(waited[0] / total)
    # The same trainer on in-memory batches: the step time without any loader.
    batches = [trainer.feed.raw_next() for _ in range(4)]
    trainer.feed.use(itertools.cycle(batches), trainer.feed.stage, trainer.feed.batch_size)
    mem = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            trainer.train_step()
        mem.append((time.perf_counter() - t0) / iters)
    return {"step": steps, "share": shares, "mem_step": mem}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=64, help="batches of 64 per timed round (about 2 stream rounds)")
    ap.add_argument("--workers", default="1,2", help="worker counts for parts 2 and 3")
    ap.add_argument("--dcgan-iters", type=int, default=10)
    ap.add_argument("--dcgan-rounds", type=int, default=3)
    ap.add_argument("--dcgan-res", type=int, default=32, help="the recipe's DCGAN: 32x32, widths 32, latent 64")
    ap.add_argument("--dcgan-width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for the DCGAN part")
    ap.add_argument("--skip-dcgan", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    workers = [int(w) for w in a.workers.split(",")]
    load = os.getloadavg()
    print(f"torch {torch.__version__}, Pillow {Image.__version__} (libjpeg-turbo: "
          f"{__import__('PIL.features').features.check_feature('libjpeg_turbo')}), {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {}
        for r, n in ((64, 4096), (256, 1024)):
            sets[r] = write_jpeg_shards(tmp / f"s{r}", r, n)
            print(f"{r}x{r}: {n} JPEGs, mean {sets[r][1] / 1e3:.1f} kB")
        print(f"\n1. per core (in-process, 1 thread), median [best] of {a.rounds} rounds x {a.batches} batches")
        print(f"{'shards -> output':<18} {'img/s wall':>16} {'img/CPU-s':>16} {'decode only img/CPU-s':>22}")
        for r, res in ((64, 64), (256, 256), (256, 64)):
            m = per_core(sets[r][0], res, a.batches, a.rounds)
            print(f"{f'{r}² -> {res}²':<18} {statistics.median(m['wall']):>9.0f} [{max(m['wall']):>5.0f}] "
                  f"{statistics.median(m['cpu']):>9.0f} [{max(m['cpu']):>5.0f}] "
                  f"{statistics.median(m['decode_cpu']):>15.0f} [{max(m['decode_cpu']):>5.0f}]")
        print(f"\n2. with N workers (make_loader), img/s wall, median [best] of {a.rounds} rounds")
        for r in (64, 256):
            for w in workers:
                wall = with_workers(sets[r][0], r, w, a.batches, a.rounds)
                print(f"{f'{r}²':<6} {w} worker(s): {statistics.median(wall):>7.0f} [{max(wall):>6.0f}]")
        if not a.skip_dcgan:
            torch.set_num_threads(a.threads)
            print(f"\n3. recipes/dcgan.yaml at {a.dcgan_res}x{a.dcgan_res} (widths {a.dcgan_width}, batch {BATCH}) "
                  f"on the 64x64 shards, xflip, {a.dcgan_rounds} rounds x {a.dcgan_iters} steps, torch threads "
                  f"{torch.get_num_threads()}")
            print(f"{'data.workers':<13} {'step ms':>9} {'in-memory step ms':>18} {'loader wait share':>18}")
            for w in [0, *workers]:
                m = dcgan_share(sets[64][0], w, a.dcgan_iters, a.dcgan_rounds, tmp / "runs", a.dcgan_res,
                                a.dcgan_width)
                step, mem = statistics.median(m["step"]) * 1e3, statistics.median(m["mem_step"]) * 1e3
                print(f"{w:<13} {step:>9.1f} {mem:>18.1f} {statistics.median(m['share']) * 100:>17.2f}%")
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} at end")


if __name__ == "__main__":
    sys.exit(main())
