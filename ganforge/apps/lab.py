"""The mode-collapse lab: sweep losses x balancers x seeds on a 2D Gaussian mixture with the real engine, score
each run with the mode-coverage metrics (modes covered, high-quality share, reverse KL) and report mean ± std.

Every run is an ordinary ganforge run (``run.run`` with a validated Recipe: the same build, pre-flight, Trainer,
checkpoints and log.jsonl as ``ganforge run``), so a lab result is reproducible with one ``ganforge run`` command
(each run directory holds its resolved recipe.yaml). An application on top of the engine: it reaches the
mode-coverage metric through the registry, like any user's script would.
Runs go to worker processes (``jobs``), one torch thread each; every combination is validated before any run
starts, so a typo fails in a second, not after an hour of sweeping.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import yaml

from .. import config, registry
from ..build import build
from ..errors import ConfigError, GanforgeError

EVAL_SEED = 2024  # latents for evaluation: the same for every run, independent of the training seed


@dataclass
class Variant:
    """A loss or balancer block to sweep, with a short label for the table."""

    label: str
    block: dict | None  # None: keep the recipe's own block


@dataclass
class RunSpec:
    index: int
    loss: Variant
    balancer: Variant
    seed: int
    name: str
    recipe: config.Recipe  # fully validated; what `ganforge run <run dir>/recipe.yaml` would train


@dataclass
class LabResult:
    spec: RunSpec
    metrics: dict[str, float]
    seconds: float
    steps: int
    samples: np.ndarray = field(repr=False)


def parse_variant(text: str, kind: str) -> Variant:
    """``name`` or ``name:key=value,key=value`` (values in YAML) -> a plugin block; ``recipe`` keeps the recipe's."""
    text = text.strip()
    if text in ("", "recipe"):
        return Variant("recipe", None)
    name, _, opts = text.partition(":")
    block: dict = {"type": name.strip()}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        if "=" not in item:
            raise ConfigError(f"--{kind} {text!r}: expected name:key=value[,key=value...], got {item!r}")
        key, raw = item.split("=", 1)
        try:
            block[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            block[key.strip()] = raw
    return Variant(text, block)


def expand_variants(values: list[str], kind: str) -> list[Variant]:
    """Variants from repeated options; ``all`` stands for every registered plugin of the kind (default options)."""
    out: list[Variant] = []
    for v in values or ["recipe"]:
        if v.strip() == "all":
            out += [Variant(e.name, {"type": e.name}) for e in registry.entries(kind)]
        else:
            out.append(parse_variant(v, kind))
    return out


def _named(variant: Variant, recipe_block: dict) -> Variant:
    """The recipe's own block gets a label that says what it is (``nonsaturating``, ``skip_d:threshold=0.5``)."""
    if variant.block is not None:
        return variant
    opts = ",".join(f"{k}={v}" for k, v in recipe_block.items() if k != "type")
    return Variant(recipe_block["type"] + (f":{opts}" if opts else ""), None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "x"


def plan(recipe_path: str, overrides: list[str], losses: list[str], balancers: list[str], seeds: list[int],
         out: Path) -> tuple[config.Recipe, list[RunSpec]]:
    """Validate every combination (recipe keys, plugin names, option names and values) and name the runs."""
    base = config.load_recipe(recipe_path, overrides)
    source = registry.build("dataset", base.data.source, "data.source")
    if not hasattr(source, "means") or not hasattr(source, "std"):
        raise ConfigError(f"{recipe_path}: data.source: the lab needs a 2D mixture dataset (ring8, grid25), "
                          f"got {base.data.source['type']!r}")
    specs = []
    loss_vs = [_named(v, base.loss) for v in expand_variants(losses, "loss")]
    bal_vs = [_named(v, base.balancer) for v in expand_variants(balancers, "balancer")]
    for loss in loss_vs:
        for bal in bal_vs:
            for seed in seeds:
                i = len(specs)
                name = f"{i:03d}-{_slug(loss.label)}-{_slug(bal.label)}-s{seed}"
                raw = base.to_dict() | {"runs_dir": str(out / "runs"), "name": name, "seed": seed}
                raw["log"] = {**raw["log"], "wandb": False, "progress": False}
                if loss.block is not None:
                    raw["loss"] = dict(loss.block)
                if bal.block is not None:
                    raw["balancer"] = dict(bal.block)
                try:
                    r = config.validate(raw)
                except ConfigError as e:
                    raise ConfigError(f"{recipe_path}: {e}") from None
                if seed == seeds[0]:  # values and fit checked once per combination, before anything trains
                    build(r)
                specs.append(RunSpec(i, loss, bal, seed, name, r))
    return base, specs


def evaluate(generator, arch, source, n: int) -> tuple[dict[str, float], np.ndarray]:
    """Score ``n`` samples of ``generator`` (fixed latents) with the mode-coverage metrics."""
    import torch

    metric = registry.get("metric", "mode_coverage", where="lab").obj.from_source(source)
    g = torch.Generator().manual_seed(EVAL_SEED)
    z = arch.sample_latents(n, generator=g)
    with torch.no_grad():
        was_training = generator.training
        generator.eval()
        x = generator(z.to(next(generator.parameters()).device)).float().cpu()
        generator.train(was_training)
    return metric.compute(x), x.numpy()


def run_one(recipe_path: str, spec: RunSpec, n_samples: int, net: str, quiet: bool = True) -> LabResult:
    """Train one configuration through the real engine (resuming if its run directory has a checkpoint), then
    evaluate G_ema (or G)."""
    from .. import run as run_mod

    t0 = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        trainer = run_mod.run(recipe_path, [], recipe=spec.recipe)
    if trainer.reason != "done":  # preempted (SIGTERM) or stopped early: scoring it would report a half-trained G
        raise GanforgeError(f"lab run {spec.name} {trainer.reason} at step {trainer.step} before the end of its "
                            "schedule; the sweep stops (run the same command again to continue it)")
    # a run resumed or reused from an earlier sweep has no meaningful wall time of its own
    seconds = time.perf_counter() - t0 if trainer.start_step == 0 else math.nan
    generator = trainer.task.ema.model if net == "ema" else trainer.task.G_raw
    metrics, samples = evaluate(generator, trainer.arch, trainer.source, n_samples)
    return LabResult(spec, metrics, seconds, trainer.step, samples)


def _worker_init():
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return math.inf, 0.0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[LabResult]) -> list[dict]:
    """One row per (loss, balancer): mean and sample std over seeds of each metric."""
    groups: dict[tuple[str, str], list[LabResult]] = {}
    for r in sorted(results, key=lambda r: r.spec.index):
        groups.setdefault((r.spec.loss.label, r.spec.balancer.label), []).append(r)
    rows = []
    for (loss, bal), rs in groups.items():
        timed = [r.seconds for r in rs if math.isfinite(r.seconds)]
        row = {"loss": loss, "balancer": bal, "seeds": len(rs),
               "seconds": statistics.fmean(timed) if timed else math.nan}
        for key in ("modes", "high_quality", "reverse_kl"):
            row[key], row[key + "_std"] = mean_std([r.metrics[key] for r in rs])
        rows.append(row)
    return rows


def format_table(rows: list[dict], n_modes: int, markdown: bool = False) -> str:
    head = ["loss", "balancer", "seeds", f"modes (of {n_modes})", "high quality %", "reverse KL", "s/run"]

    def cells(r):
        kl = "inf" if math.isinf(r["reverse_kl"]) else f"{r['reverse_kl']:.3f} ± {r['reverse_kl_std']:.3f}"
        return [r["loss"], r["balancer"], str(r["seeds"]), f"{r['modes']:.1f} ± {r['modes_std']:.1f}",
                f"{100 * r['high_quality']:.1f} ± {100 * r['high_quality_std']:.1f}", kl,
                f"{r['seconds']:.0f}" if math.isfinite(r["seconds"]) else "reused"]

    body = [cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cs: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cs, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in body])


def _strict_json(obj):
    """NaN/inf are not JSON: an unknown wall time becomes null, an infinite reverse KL the string "inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict_json(v) for v in obj]
    return obj


def write_plots(results: list[LabResult], source, out: Path, size: int = 256) -> Path:
    """One scatter PNG per run (``scatter/<run>.png``) and an overview (``scatter.png``: a row per loss x
    balancer, a column per seed)."""
    from PIL import Image, ImageDraw

    metric = registry.get("metric", "mode_coverage", where="lab").obj.from_source(source)
    extent = float(getattr(source, "extent", np.abs(source.means.numpy()).max() * 1.25))
    (out / "scatter").mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[str, str], list[tuple[LabResult, np.ndarray]]] = {}
    for r in sorted(results, key=lambda r: r.spec.index):
        img = metric.plot(r.samples, extent, size)
        Image.fromarray(img).save(out / "scatter" / f"{r.spec.name}.png")
        rows.setdefault((r.spec.loss.label, r.spec.balancer.label), []).append((r, img))
    label_h, pad = 30, 4
    ncol = max(len(v) for v in rows.values())
    sheet = Image.new("RGB", (ncol * (size + pad) + pad, len(rows) * (size + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((loss, bal), items) in enumerate(rows.items()):
        y = pad + i * (size + label_h + pad)
        for j, (r, img) in enumerate(items):
            x = pad + j * (size + pad)
            m = r.metrics
            draw.text((x + 2, y + 2), f"{loss} / {bal} / seed {r.spec.seed}", fill="black")
            draw.text((x + 2, y + 15), f"{m['modes']:.0f} modes, {100 * m['high_quality']:.1f}% HQ", fill="black")
            sheet.paste(Image.fromarray(img), (x, y + label_h))
    path = out / "scatter.png"
    sheet.save(path)
    return path


def sweep(recipe_path: str, overrides: list[str], losses: list[str], balancers: list[str], seeds: list[int],
          out: Path, jobs: int | None = None, n_samples: int = 2500, net: str = "ema", echo=print) -> list[dict]:
    base, specs = plan(recipe_path, overrides, losses, balancers, seeds, out)
    source = registry.build("dataset", base.data.source, "data.source")
    if net == "ema" and base.train.ema_kimg <= 0:
        raise ConfigError("train.ema_kimg is 0 (no G_ema): evaluate G instead (--net g)")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(specs)))
    out.mkdir(parents=True, exist_ok=True)
    echo(f"lab: {len(specs)} runs ({len(specs) // len(seeds)} configurations x {len(seeds)} seeds) of "
         f"{recipe_path} on {base.data.source['type']}, {jobs} job(s); output in {out}")
    t0 = time.perf_counter()
    results: list[LabResult] = []

    def report(res: LabResult):
        results.append(res)
        m = res.metrics
        echo(f"[{len(results)}/{len(specs)}] {res.spec.loss.label} / {res.spec.balancer.label} / seed "
             f"{res.spec.seed}: {m['modes']:.0f} modes, {100 * m['high_quality']:.1f}% high quality, reverse KL "
             f"{m['reverse_kl']:.3f} ({res.steps} steps, "
             f"{f'{res.seconds:.0f} s' if math.isfinite(res.seconds) else 'resumed or reused'})")

    if jobs == 1:
        for spec in specs:
            report(run_one(recipe_path, spec, n_samples, net))
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
            futures = [pool.submit(run_one, recipe_path, s, n_samples, net) for s in specs]
            for f in futures:
                try:
                    report(f.result())
                except GanforgeError:
                    for other in futures:
                        other.cancel()
                    raise
    rows = summarize(results)
    n_modes = len(source.means)
    table = format_table(rows, n_modes)
    wall = time.perf_counter() - t0
    echo("")
    echo(f"{base.data.source['type']}: mean ± std over seeds {seeds}, {n_samples} samples from "
         f"{'G_ema' if net == 'ema' else 'G'} per run (high quality: within 3σ of a mode)")
    echo(table)
    plot = write_plots(results, source, out)
    (out / "table.md").write_text(format_table(rows, n_modes, markdown=True) + "\n")
    (out / "results.json").write_text(json.dumps(_strict_json({
        "recipe": str(recipe_path), "overrides": list(overrides), "dataset": base.data.source, "seeds": seeds,
        "samples": n_samples, "net": net, "jobs": jobs, "wall_seconds": wall, "summary": rows,
        "runs": [{"name": r.spec.name, "loss": r.spec.loss.label, "balancer": r.spec.balancer.label,
                  "seed": r.spec.seed, "steps": r.steps, "seconds": r.seconds, **r.metrics}
                 for r in sorted(results, key=lambda r: r.spec.index)]}), indent=1))
    echo(f"\n{len(specs)} runs in {wall:.0f} s; table: {out / 'table.md'}, scatter plots: {plot}, "
         f"per run: {out / 'scatter'}/")
    return rows
