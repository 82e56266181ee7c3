"""One DCGAN training iteration (D step + G step + EMA; batch 64, 32x32) through ganforge vs a hand-written
PyTorch loop of the same nets, optimizers, batch and EMA — timed in the same process, interleaved, so the ratio
is meaningful even on a noisy machine.

    python bench/bench_dcgan_step.py [--iters 30] [--rounds 5] [--threads 2] [--workers 1]

Rows: the hand-written loop (in-memory batches); ganforge's ``Trainer.train_step`` fed the same in-memory
batches (engine overhead only); ganforge with its real webdataset stream (adds the loader's cost).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]


def build_trainer(workers: int, tmp: Path, batch: int):
    from accelerate import Accelerator

    from ganforge import config
    from ganforge.build import build
    from ganforge.engine.loop import Trainer

    recipe = config.load_recipe(ROOT / "recipes/dcgan.yaml", [
        f"runs_dir={tmp}", f"train.batch_size={batch}", "log.wandb=false", "log.progress=false",
        "model.g_width=64", "model.d_width=64", "model.latent_dim=100", f"data.workers={workers}",
        "train.ema_rampup=null", f"data.source.cache_dir={tmp / 'cache'}", "data.source.count=4096"])
    components = build(recipe)
    components.source.prepare()
    trainer = Trainer(components, Accelerator(cpu=True), tmp / "run")
    trainer.start_stream()
    return trainer


class HandWritten:
    """The loop a careful user would write by hand: same nets/init, Adam, BCE losses, EMA of G."""

    def __init__(self, trainer, batches):
        r = trainer.recipe
        torch.manual_seed(r.seed)
        self.arch = trainer.arch
        self.G, self.D = self.arch.build_generator(), self.arch.build_discriminator()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=r.train.g_opt.lr, betas=r.train.g_opt.betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=r.train.d_opt.lr, betas=r.train.d_opt.betas)
        self.batches = itertools.cycle(batches)
        self.beta = trainer.task.ema.beta(r.train.batch_size, 1e9)

    def step(self):
        real = next(self.batches)["image"]
        n = real.shape[0]
        with torch.no_grad():
            fake = self.G(torch.randn(n, self.arch.latent_dim))
        d_real, d_fake = self.D(real), self.D(fake)
        loss_d = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + F.softplus(d_fake).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()
        self.D.requires_grad_(False)
        loss_g = F.softplus(-self.D(self.G(torch.randn(n, self.arch.latent_dim)))).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        with torch.no_grad():
            for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
                pe.lerp_(p, 1 - self.beta)
            for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
                be.copy_(b)


def timed(fn, iters: int) -> float:
    fn()  # warm-up iteration outside the clock
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        stream_trainer = build_trainer(a.workers, Path(tmp), a.batch)
        batches = [stream_trainer.feed.raw_next() for _ in range(16)]
        mem_trainer = build_trainer(0, Path(tmp) / "mem", a.batch)
        mem_trainer.feed.use(itertools.cycle(batches), 0, a.batch)
        hand = HandWritten(mem_trainer, batches)
        rows = {"hand-written loop (in-memory batches)": [], "ganforge train_step (in-memory batches)": [],
                f"ganforge train_step (webdataset stream, {a.workers} workers)": []}
        fns = [hand.step, mem_trainer.train_step, stream_trainer.train_step]
        for _ in range(a.rounds):  # interleave so drift in machine load hits every row alike
            for times, fn in zip(rows.values(), fns):
                times.append(timed(fn, a.iters))
    base = rows["hand-written loop (in-memory batches)"]
    print(f"DCGAN iteration, batch {a.batch}, 32x32, {a.threads} threads, {a.rounds}x{a.iters} iterations, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print("ratio = median over rounds of (variant / hand-written) timed back to back in the same round")
    print(f"{'variant':<50} {'ms/iter (median)':>17} {'min':>8} {'img/s':>8} {'ratio':>7}")
    for name, times in rows.items():
        med = statistics.median(times)
        ratio = statistics.median(t / b for t, b in zip(times, base))
        print(f"{name:<50} {med * 1e3:>17.1f} {min(times) * 1e3:>8.1f} {a.batch / med:>8.0f} {ratio:>7.3f}")


if __name__ == "__main__":
    sys.exit(main())
