"""Neural style transfer: seconds per 100 L-BFGS iterations through ganforge's style task vs a plain hand-written
PyTorch Gatys loop (same extractor object, layers, images, losses and L-BFGS settings), timed in the same process,
interleaved; plus the fast stylizer's images/s (training through the engine, and applying the network).

    python bench/style_bench.py                                   # the full table: 256 and 512, 100 iterations
    python bench/style_bench.py --sizes 64 --iters 10 --rounds 1 --extractors random_multiscale   # a quick check

Rows: ``random_multiscale`` (the default recipe's extractor: 64 random filters at 6 scales, no weights) and
``vgg19 (random init)``: timm's VGG-19 built with ``pretrained=False`` (no weights exist on the benchmark machines
and nothing downloads), with Gatys' layers (content relu4_2, style relu1_1..relu5_1). Random weights cost exactly
what trained ones do, but the image it produces means nothing: the row measures speed only.

Both loops start from the content image and do the same arithmetic in the same order, so they take the same
L-BFGS iterations and loss evaluations (printed: ``evals``) and, on CPU, end at the same image (``max |diff|``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VGG_LOSSES = [{"type": "content", "layers": ["relu4_2"], "weight": 1.0},
              {"type": "gram", "layers": ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
               "layer_weights": [1, 1, 1, 1, 1], "weight": 1.0e7},
              {"type": "total_variation", "weight": 0.01}]
EXTRACTORS = {"random_multiscale": ({"type": "random_multiscale", "filters": 64}, None),
              "vgg19": ({"type": "timm", "model": "vgg19", "random_init": True}, VGG_LOSSES)}


def style_trainer(extractor: str, size: int, steps: int, tmp: Path, device: str):
    """A Trainer of the style task at ``size``, ready to step (the run directory is never written: no hooks)."""
    from accelerate import Accelerator

    from ganforge import config
    from ganforge.build import build
    from ganforge.engine.loop import Trainer
    from ganforge.tasks.style_recipe import StyleRecipe

    block, losses = EXTRACTORS[extractor]
    raw = StyleRecipe().to_dict()
    raw.update(size=size, extractor=block, runs_dir=str(tmp))
    raw["train"]["steps"] = steps
    if losses is not None:
        raw["losses"] = losses
    components = build(config.validate(raw))
    trainer = Trainer(components, Accelerator(cpu=device == "cpu"), tmp / "run")
    trainer.start_stream()  # what `ganforge run` does before the first step
    return trainer


class PlainGatys:
    """The loop a careful user writes by hand: the image as a leaf tensor, L-BFGS with a closure, the same losses
    written out (MSE of features, MSE of Gram matrices normalised by C*H*W, squared total variation)."""

    def __init__(self, trainer):
        c, task = trainer.components, trainer.task
        r, dev = c.recipe, trainer.accelerator.device
        self.extractor, self.layers = task.extractor, task.layers  # the very same network object and layers
        self.terms = [(b["type"], b.get("layers", ()), b.get("layer_weights"), b["weight"]) for b in r.losses]
        with torch.no_grad():
            fc = self.extractor(c.content.to(dev), self.layers)
            fs = self.extractor(c.styles[0].to(dev), self.layers)
        self.fc, self.gs = fc, {n: self.gram(f) for n, f in fs.items()}
        self.image = c.content.to(dev).clone().requires_grad_(True)
        o = r.optimizer
        self.opt = torch.optim.LBFGS([self.image], lr=o.learning_rate, max_iter=o.max_iter,
                                     history_size=o.history_size, line_search_fn="strong_wolfe")

    @staticmethod
    def gram(f):
        b, ch, h, w = f.shape
        f = f.reshape(b, ch, h * w)
        return f @ f.transpose(1, 2) / (ch * h * w)

    def loss(self):
        x = self.image
        feats = self.extractor(x, self.layers)
        total = 0.0
        for kind, layers, lw, weight in self.terms:
            if kind == "content":
                total = total + weight * sum((feats[n] - self.fc[n]).pow(2).mean() for n in layers)
            elif kind == "gram":
                lw = lw or [1.0] * len(layers)
                total = total + weight * sum(w * (self.gram(feats[n]) - self.gs[n]).pow(2).mean()
                                             for n, w in zip(layers, lw))
            else:
                dy, dx = x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
                total = total + weight * (dy.pow(2).mean() + dx.pow(2).mean())
        return total

    def step(self):
        def closure():
            self.opt.zero_grad()
            loss = self.loss()
            loss.backward()
            return loss

        self.opt.step(closure)
        with torch.no_grad():
            self.image.clamp_(-1, 1)


def evals(opt) -> tuple[int, int]:
    s = opt.state[opt.param_groups[0]["params"][0]]
    return s.get("n_iter", 0), s.get("func_evals", 0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gatys_rows(a, tmp: Path) -> list[tuple]:
    rows = []
    for extractor in a.extractors:
        for size in a.sizes:
            steps = max(1, a.iters // 5)  # max_iter 5 iterations per step (the recipe's default)
            times = {"ganforge": [], "plain": []}
            for rnd in range(a.rounds):  # interleaved and from the same start, so both see the same machine
                trainer = style_trainer(extractor, size, steps, tmp / f"{extractor}-{size}-{rnd}", a.device)
                plain = PlainGatys(trainer)
                plain.loss().backward()  # warm-up of the shared extractor (first-call allocations), untimed
                plain.image.grad = None
                order = [("ganforge", trainer.train_step), ("plain", plain.step)]
                for name, fn in order if rnd % 2 == 0 else order[::-1]:  # alternate who goes first
                    sync(a.device)
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        fn()
                    sync(a.device)
                    times[name].append(time.perf_counter() - t0)
            it_g, ev_g = evals(trainer.task.opt)
            it_p, ev_p = evals(plain.opt)
            diff = (trainer.task.module.image.detach() - plain.image.detach()).abs().max().item()
            per100 = {k: statistics.median(v) / max(it_g, 1) * 100 for k, v in times.items()}
            ratio = statistics.median(g / p for g, p in zip(times["ganforge"], times["plain"]))
            label = extractor if extractor != "vgg19" else "vgg19 (random init)"
            rows.append((label, size, per100["ganforge"], per100["plain"], ratio, f"{it_g}/{ev_g}",
                         f"{it_p}/{ev_p}", diff))
    return rows


def fast_rows(a, tmp: Path) -> list[str]:
    """The fast stylizer of recipes/fast_style.yaml: training images/s through the engine (real data stream),
    and applying the trained-size network to batches of images."""
    from accelerate import Accelerator

    from ganforge import config
    from ganforge.build import build
    from ganforge.engine.loop import Trainer

    recipe = config.load_recipe(ROOT / "recipes" / "fast_style.yaml", [
        f"runs_dir={tmp}", f"size={a.fast_size}", f"train.batch_size={a.fast_batch}", "log.progress=false",
        f"data.source.cache_dir={tmp / 'cache'}", "data.source.count=512", "data.source.shard_size=256",
        f"data.source.resolution={a.fast_size}"])
    c = build(recipe)
    acc = Accelerator(cpu=a.device == "cpu")
    c.prepare_data(acc)
    trainer = Trainer(c, acc, tmp / "fast")
    trainer.start_stream()
    trainer.train_step()  # warm-up (worker start, first allocation)
    sync(a.device)
    t0 = time.perf_counter()
    for _ in range(a.fast_steps):
        trainer.train_step()
    sync(a.device)
    train = a.fast_steps * a.fast_batch / (time.perf_counter() - t0)
    net = trainer.task.net_raw.eval()
    x = torch.rand(a.fast_batch, 3, a.fast_size, a.fast_size, device=acc.device) * 2 - 1
    with torch.no_grad():
        net(x)
        sync(a.device)
        t0 = time.perf_counter()
        for _ in range(a.fast_steps):
            net(x)
        sync(a.device)
    apply = a.fast_steps * a.fast_batch / (time.perf_counter() - t0)
    net_block = ", ".join(f"{k}={v}" for k, v in recipe.network.items())
    return [f"fast stylizer ({net_block}), {a.fast_size}x{a.fast_size}, batch {a.fast_batch}: "
            f"training {train:.1f} img/s (engine + data stream), applying {apply:.1f} img/s"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--iters", type=int, default=100, help="L-BFGS iterations per timing (5 per step)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--extractors", nargs="+", choices=list(EXTRACTORS), default=list(EXTRACTORS))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fast-size", type=int, default=64)
    ap.add_argument("--fast-batch", type=int, default=4)
    ap.add_argument("--fast-steps", type=int, default=20, help="0: skip the fast stylizer")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = gatys_rows(a, Path(tmp))
        fast = fast_rows(a, Path(tmp)) if a.fast_steps > 0 else []
    print(f"Gatys style transfer, L-BFGS (lr 1, max_iter 5, history 50, strong Wolfe), {a.iters} iterations x "
          f"{a.rounds} rounds, device {a.device}, {a.threads} threads, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    print("s/100 it = median seconds per 100 L-BFGS iterations; ratio = median of ganforge / plain per round "
          "(target <= 1.05); iters/evals = L-BFGS iterations / loss evaluations of the last round")
    print("| extractor | size | ganforge s/100 it | plain s/100 it | ratio | ganforge iters/evals | "
          "plain iters/evals | max abs diff |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, size, g, p, ratio, eg, ep, diff in rows:
        print(f"| {label} | {size}² | {g:.2f} | {p:.2f} | {ratio:.3f} | {eg} | {ep} | {diff:.1e} |")
    for line in fast:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
