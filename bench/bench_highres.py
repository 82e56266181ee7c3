"""Throughput per stage of the high-resolution recipes (ProGAN, MSG-GAN) and the cost of a stage change.

Runs the engine's real ``Trainer.train_step`` (phases, penalties, EMA, lr schedulers) on in-memory batches at
each stage, so the figure is the training step, not the loader. The stage change is timed on the real path:
``_enter_stage`` opens the next stage's webdataset stream (fast-forward included) and sets the stage.

    python bench/bench_highres.py                     # CPU, the shipped recipes
    python bench/bench_highres.py --device cuda --set model.resolution=256 ...   # on a GPU
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


def build_trainer(recipe_name: str, tmp: Path, device: str, extra: list[str]):
    from accelerate import Accelerator

    from ganforge import config
    from ganforge.build import build
    from ganforge.engine.loop import Trainer

    recipe = config.load_recipe(ROOT / "recipes" / recipe_name, [
        f"runs_dir={tmp}", "log.wandb=false", "log.progress=false", f"data.source.cache_dir={tmp / 'cache'}",
        "data.source.count=2048", "data.workers=0", *extra])
    components = build(recipe)
    components.source.prepare()
    return Trainer(components, Accelerator(cpu=device == "cpu"), tmp / recipe_name)


def time_stage(trainer, stage, iters: int, rounds: int) -> tuple[float, float]:
    """Median seconds per step and images per step at ``stage`` (in-memory batches of its size)."""
    acc, arch = trainer.accelerator, trainer.arch
    real = torch.rand(stage.batch_size, arch.channels, stage.resolution, stage.resolution, device=acc.device) * 2 - 1
    trainer.feed.use(itertools.repeat({"image": real, "skipped": 0}), stage.index, stage.batch_size)
    trainer.task.set_stage(stage)
    step = lambda: _step(trainer, stage)
    step()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times), stage.batch_size * acc.num_processes


def _step(trainer, stage):
    """One training step held at ``stage`` (the schedule would otherwise move on as kimg grows)."""
    from ganforge.engine.phases import run_phase

    for phase in trainer.task.plan(trainer.step, {}):
        run_phase(trainer.accelerator, phase)
    trainer.task.end_step(1e3, stage)  # EMA update and lr scheduler step, at the held stage's multiplier


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", default="progan.yaml,msggan.yaml")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", action="append", default=[], help="recipe override (repeatable)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.device}, {a.threads} threads, {a.rounds}x{a.iters} steps per stage "
          "(median of rounds); img/s = reals D trains on per second")
    print(f"{'recipe':<12} {'stage':>5} {'res':>5} {'batch':>6} {'ms/step':>9} {'img/s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.recipes.split(","):
            trainer = build_trainer(name, Path(tmp), a.device, a.set)
            sched = trainer.schedule
            stages = [sched.at(start) for start in sched.starts]
            for st in stages:
                sec, imgs = time_stage(trainer, st, a.iters, a.rounds)
                print(f"{name:<12} {st.index:>5} {st.resolution:>5} {imgs:>6} {sec * 1e3:>9.1f} {imgs / sec:>8.1f}")
            if len(stages) > 1:
                trainer.log = type("L", (), {"write": staticmethod(print)})()
                costs = []
                for st in stages:
                    trainer.feed.pos_stage = max(st.index - 1, 0)
                    t0 = time.perf_counter()
                    trainer._enter_stage(st, quiet=True)
                    trainer.feed.next()  # the first batch of the new stream: what the next step waits for
                    costs.append(time.perf_counter() - t0)
                print(f"{name:<12} stage change (new stream + set_stage + first batch): "
                      f"median {statistics.median(costs) * 1e3:.0f} ms, max {max(costs) * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
