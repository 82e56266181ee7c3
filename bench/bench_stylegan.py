"""Throughput of one full StyleGAN training iteration through ganforge's engine: D step, G step, the lazy R1
(every 16 D steps) and path-length (every 4 G steps) passes amortized, and the EMA update — i.e. exactly
``Trainer.train_step`` on the shipped recipes. Prints img/s, peak memory and model FLOPs utilization.

    python bench/bench_stylegan.py                                  # CPU, 64x64, small nets (fp32)
    python bench/bench_stylegan.py --preset 256 --precision bf16 --batch 64 --channels-last      # one GPU
    python bench/bench_stylegan.py --preset 1024 --precision bf16 --batch 16 --channels-last     # one GPU

Timing covers whole 16-iteration cycles (so R1 and path length fire exactly 1 and 4 times per cycle) after one
warm-up cycle. Real images are random tensors already on the device: this measures training, not data loading
(the webdataset stream runs in worker processes on spare cores). FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` on a plain iteration, an R1 pass and a path-length pass, then
amortized; MFU divides the achieved FLOP/s by the peak dense matmul rate *measured in the same process* (the
``--peak-tflops`` flag overrides it, e.g. with a datasheet figure).
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]

PRESETS = {  # recipe + model overrides
    "64": ("stylegan.yaml", ["model.resolution=64", "data.source.resolution=64"]),
    "256": ("stylegan256.yaml", []),
    "1024": ("stylegan1024.yaml", []),
}
CYCLE = 16  # lcm of the R1 (16) and path-length (4) intervals


def build_trainer(a, tmp: Path):
    from accelerate import Accelerator

    from ganforge import config
    from ganforge.build import build
    from ganforge.engine.loop import Trainer

    name, over = PRESETS[a.preset]
    over = [*over, f"runs_dir={tmp}", f"train.batch_size={a.batch}", f"train.mixed_precision='{a.precision}'",
            "log.wandb=false", "log.progress=false", "log.every=1000000000", "train.ema_rampup=null",
            f"train.channels_last={str(a.channels_last).lower()}", f"train.compile={str(a.compile).lower()}",
            *a.set]
    recipe = config.load_recipe(ROOT / "recipes" / name, over)
    components = build(recipe, preflight_check=False)  # a 1024² pre-flight on the bench host would only cost time
    arch = components.arch
    acc = Accelerator(cpu=a.device == "cpu", mixed_precision=a.precision,
                      dynamo_backend="inductor" if a.compile else None)
    trainer = Trainer(components, acc, tmp / "run")
    real = torch.rand(a.batch, arch.channels, arch.resolution, arch.resolution, device=acc.device) * 2 - 1
    real = real.contiguous(memory_format=trainer.feed.memory_format)
    trainer.feed.use(itertools.repeat({"image": real, "skipped": 0}), 0, a.batch)
    return trainer


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break ``torch.autograd.grad`` (R1 and
    path length): everything is counted under "Global", which is all ``get_total_flops`` reads."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(t) -> dict[str, float]:
    """FLOPs of a plain iteration, of one R1 pass and of one path-length pass (forcing which ones are due)."""
    counts = t.task.counts  # main-phase runs per network: a lazy penalty fires when its count % interval == 0
    saved = dict(counts)
    out = {}
    for key, steps in (("both", (0, 0)), ("pl", (4, 4)), ("plain", (1, 1))):
        counts.update(D=steps[0], G=steps[1])
        fc = FlopCounterMode(display=False)
        fc.mod_tracker = _NoModuleTracking()
        with fc:
            t.train_step()
        out[key] = fc.get_total_flops()
    counts.update(saved)
    plain, pl, r1 = out["plain"], out["pl"] - out["plain"], out["both"] - out["pl"]
    r1_every = next((r.interval for r in t.task.regularizers if r.phase == "D"), 0)
    pl_every = next((r.interval for r in t.task.regularizers if r.phase == "G"), 0)
    amortized = plain + (r1 / r1_every if r1_every else 0) + (pl / pl_every if pl_every else 0)
    return {"plain": plain, "r1": r1, "pl": pl, "iteration": amortized}


def matmul_peak(device, dtype) -> float:
    """Achieved FLOP/s of a large dense matmul: the practical ceiling MFU is measured against."""
    n = 4096 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 50 if device == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="64")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["no", "bf16", "fp16"], default="no")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cycles", type=int, default=2, help="timed 16-iteration cycles per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="train.compile (plain forwards; penalties stay eager)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="MFU denominator (default: measured matmul)")
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides, e.g. model.channel_max=256")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        t = build_trainer(a, Path(tmp))
        for _ in range(CYCLE):  # warm-up: every code path once (compile, cuDNN autotuning, allocator)
            t.train_step()
        sync(a.device)
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            for _ in range(a.cycles * CYCLE):
                t.train_step()
            sync(a.device)
            times.append((time.perf_counter() - t0) / (a.cycles * CYCLE))
        if a.device == "cuda":
            peak_mem = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (allocated)"
        else:
            peak_mem = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"
        flops = count_flops(t)
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float16 if a.precision == "fp16" else torch.float32
    peak = a.peak_tflops * 1e12 if a.peak_tflops else matmul_peak(a.device, dtype)
    med = statistics.median(times)
    r = t.task.arch
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"{os.cpu_count()} CPUs, {a.threads} threads"
    print(f"StyleGAN iteration at {r.resolution}x{r.resolution}: batch {a.batch}, {a.precision}, "
          f"channels_last={a.channels_last}, compile={a.compile}, channel_base {r.channel_base}, "
          f"channel_max {r.channel_max}, mapping {r.mapping_layers}x{r.w_dim}; {dev}; torch {torch.__version__}")
    print(f"FLOPs/iteration: plain {flops['plain'] / 1e9:.1f} G, R1 pass {flops['r1'] / 1e9:.1f} G, "
          f"path-length pass {flops['pl'] / 1e9:.1f} G, amortized {flops['iteration'] / 1e9:.1f} G "
          f"({flops['iteration'] / a.batch / 1e9:.2f} GFLOP per image); peak {peak / 1e12:.2f} TFLOP/s "
          f"({'given' if a.peak_tflops else 'measured matmul'})")
    print("| resolution | precision | batch | ms/iter (median) | min | img/s | peak memory | TFLOP/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    achieved = flops["iteration"] / med
    print(f"| {r.resolution}² | {a.precision} | {a.batch} | {med * 1e3:.1f} | {min(times) * 1e3:.1f} | "
          f"{a.batch / med:.1f} | {peak_mem} | {achieved / 1e12:.3f} | {achieved / peak:.1%} |")


if __name__ == "__main__":
    sys.exit(main())
