"""Training throughput of the R3GAN recipe against the StyleGAN recipe at the same resolution and batch, with
R1 + R2 every step (the paper; exact or by finite differences) and lazy (one shared D phase every 16 steps),
through ganforge's engine: exactly ``Trainer.train_step`` (D step, G step, penalties, EMA, schedules).

    python bench/bench_r3gan.py                           # CPU: recipes/r3gan.yaml vs recipes/stylegan.yaml, 32x32
    python bench/bench_r3gan.py --preset 256 --batch 32   # one GPU: r3gan256.yaml vs stylegan256.yaml

The configurations are timed in interleaved rounds (A B C A B C ...) so a slower moment of a shared machine hits
all of them; each round is whole 16-iteration cycles after one warm-up cycle, so lazy penalties fire exactly once
per cycle. Real images are random tensors already on the device: this measures training, not data loading.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
CYCLE = 16
PRESETS = {"32": ("r3gan.yaml", "stylegan.yaml"), "256": ("r3gan256.yaml", "stylegan256.yaml")}


def build_trainer(recipe_name: str, a, tmp: Path, lazy: int | None, method: str = "exact"):
    from accelerate import Accelerator

    from ganforge import config
    from ganforge.build import build
    from ganforge.engine.loop import Trainer

    over = [f"runs_dir={tmp}", f"train.batch_size={a.batch}", f"train.mixed_precision='{a.precision}'",
            "log.wandb=false", "log.progress=false", "log.every=1000000000"]
    recipe = config.load_recipe(ROOT / "recipes" / recipe_name, over)
    if lazy == 0:  # no penalties (and no schedule of their gamma)
        recipe.regularizers = []
        recipe.schedule.values = {k: v for k, v in recipe.schedule.values.items() if not k.startswith("regularizers")}
    for reg in recipe.regularizers if lazy else []:
        reg["interval"], reg["method"] = lazy, method
    components = build(recipe, preflight_check=False)
    arch = components.arch
    acc = Accelerator(cpu=a.device == "cpu", mixed_precision=a.precision)
    trainer = Trainer(components, acc, tmp / f"run-{recipe_name}-{lazy}-{method}")
    real = torch.rand(a.batch, arch.channels, arch.resolution, arch.resolution, device=acc.device) * 2 - 1
    trainer.feed.use(itertools.repeat({"image": real, "skipped": 0}), 0, a.batch)
    return trainer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["no", "bf16"], default="no")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cycles", type=int, default=1, help="timed 16-iteration cycles per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    r3, sg = PRESETS[a.preset]
    configs = {"StyleGAN recipe (lazy R1)": (sg, None, "exact"), "R3GAN, R1 + R2 every step": (r3, 1, "exact"),
               "R3GAN, R1 + R2 every step, finite difference": (r3, 1, "finite_difference"),
               "R3GAN, R1 + R2 lazy (every 16)": (r3, 16, "exact"), "R3GAN, no R1/R2 (their cost)": (r3, 0, "exact")}
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name, (recipe, lazy, method) in configs.items():
            t = build_trainer(recipe, a, Path(tmp), lazy, method)
            for _ in range(CYCLE):  # warm-up: every code path once
                t.train_step()
            trainers[name] = t
        times = {name: [] for name in configs}
        for _ in range(a.rounds):
            for name, t in trainers.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(a.cycles * CYCLE):
                    t.train_step()
                sync()
                times[name].append((time.perf_counter() - t0) / (a.cycles * CYCLE))
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"{os.cpu_count()} CPUs, {a.threads} threads"
    res = trainers[next(iter(trainers))].task.arch.resolution
    print(f"{res}x{res}, batch {a.batch}, {a.precision}; {dev}; torch {torch.__version__}; "
          f"{a.rounds} interleaved rounds of {a.cycles * CYCLE} iterations")
    print("| configuration | ms/iter (median) | min | img/s | vs StyleGAN recipe |")
    print("|---|---:|---:|---:|---:|")
    base = statistics.median(times[next(iter(times))])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.1f} | {min(ts) * 1e3:.1f} | {a.batch / med:.1f} | {base / med:.2f}× |")


if __name__ == "__main__":
    sys.exit(main())
