"""The lab: sweep recipe settings x seeds with the real engine, score every run with a metric plugin and report
mean ± std per setting — hyper-parameter sensitivity and mode collapse, measured.

Axes are ``--set KEY=V1,V2`` (any recipe key, values in YAML) and ``--loss``/``--balancer`` variants (plugin
blocks); the runs are their product x seeds. Every run is an ordinary ganforge run (``run.run`` with a validated
Recipe: the same build, pre-flight, Trainer, checkpoints and log.jsonl as ``ganforge run``), so a result is
reproducible with one ``ganforge run`` command (each run directory holds its resolved recipe.yaml). A run whose
directory already holds its final checkpoint is scored again, not retrained: an interrupted sweep resumes.
Scoring: on a 2D mixture the mode-coverage metrics on raw samples; on images any metric plugin through the same
Evaluator periodic evaluation uses (``class_coverage`` on labelled data by default). Runs go to worker processes
(``jobs``); every combination is validated before any run starts, so a typo fails in a second, not an hour in.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import re
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
from ..metrics_config import MetricsConfig
from ..run import usable_cores

EVAL_SEED = 2024  # latents for evaluation: the same for every run, independent of the training seed


@dataclass
class Variant:
    """One value of an axis, with a short label for the table."""

    label: str
    block: object = None  # a loss/balancer block, or None: keep the recipe's own
    override: str | None = None  # a `KEY=VALUE` override (--set axes)


@dataclass
class Axis:
    label: str  # the column title: "loss", "balancer" or the --set key
    variants: list[Variant]


@dataclass
class RunSpec:
    index: int
    settings: dict[str, str]  # axis label -> variant label
    seed: int
    name: str
    recipe: config.Recipe  # fully validated; what `ganforge run <run dir>/recipe.yaml` would train


@dataclass
class Scoring:
    """How runs are scored: ``mixture`` (mode coverage on raw samples) or ``evaluator`` (a metric plugin)."""

    kind: str
    n: int
    metrics: MetricsConfig | None = None


@dataclass
class LabResult:
    spec: RunSpec
    metrics: dict[str, float]
    seconds: float
    steps: int
    samples: np.ndarray | None = field(default=None, repr=False)


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


def split_values(text: str) -> list[str]:
    """``1e-4,2e-4`` -> two values; commas inside brackets stay (``[0.5, 0.99],[0.0, 0.99]`` is two lists)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [v for v in out + [cur.strip()] if v]


def parse_set(text: str) -> Axis:
    """``--set train.g_opt.lr=1e-4,2e-4`` -> an axis over that key."""
    key, eq, values = text.partition("=")
    key = key.strip()
    if not eq or not key or not split_values(values):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE[,VALUE...] (e.g. train.g_opt.lr=1e-4,2e-4)")
    return Axis(key, [Variant(v, override=f"{key}={v}") for v in split_values(values)])


def plugin_axis(values: list[str], kind: str, recipe_block: dict) -> Axis:
    """Variants from repeated options; ``all`` stands for every registered plugin of the kind (default options)."""
    out: list[Variant] = []
    for v in values:
        if v.strip() == "all":
            out += [Variant(e.name, {"type": e.name}) for e in registry.entries(kind)]
        else:
            out.append(parse_variant(v, kind))
    # the recipe's own block gets a label that says what it is (``nonsaturating``, ``skip_d:threshold=0.5``)
    opts = ",".join(f"{k}={v}" for k, v in recipe_block.items() if k != "type")
    own = recipe_block["type"] + (f":{opts}" if opts else "")
    return Axis(kind, [v if v.block is not None else Variant(own, None) for v in out])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "x"


def plan(recipe_path: str, overrides: list[str], axes_args: dict, seeds: list[int], out: Path
         ) -> tuple[config.Recipe, list[Axis], list[RunSpec]]:
    """Validate every combination (recipe keys, plugin names, option names and values) and name the runs.
    ``axes_args``: ``{"set": [...], "loss": [...], "balancer": [...]}`` as given on the command line."""
    base = config.load_recipe(recipe_path, overrides)  # its errors name the recipe file
    axes = [plugin_axis(axes_args[k], k, getattr(base, k)) for k in ("loss", "balancer") if axes_args.get(k)]
    axes += [parse_set(s) for s in axes_args.get("set", [])]
    axes = axes or [Axis("recipe", [Variant(base.name)])]  # nothing swept: seeds of the recipe as it is
    if len({a.label for a in axes}) < len(axes):
        raise ConfigError(f"the same axis is swept twice: {', '.join(a.label for a in axes)}")
    specs = []
    for combo in itertools.product(*(a.variants for a in axes)):
        sets = [v.override for v in combo if v.override is not None]
        raw = config.load_recipe(recipe_path, list(overrides) + sets).to_dict() if sets else base.to_dict()
        for axis, v in zip(axes, combo):
            if v.block is not None:
                raw[axis.label] = dict(v.block)
        label = "-".join(_slug(v.label) for v in combo) or "recipe"
        for seed in seeds:
            i = len(specs)
            # named by settings and seed only: the same command (or one with more seeds or values) finds
            # the runs it already finished and reuses them
            name = f"{label}-s{seed}"
            r_raw = raw | {"runs_dir": str(out / "runs"), "name": name, "seed": seed}
            r_raw["log"] = {**raw["log"], "wandb": False, "progress": False}
            try:
                r = config.validate(r_raw)
            except ConfigError as e:
                raise ConfigError(f"{recipe_path}: {e}") from None
            if seed == seeds[0]:  # values and fit checked once per combination, before anything trains
                build(r)
            specs.append(RunSpec(i, {a.label: v.label for a, v in zip(axes, combo)}, seed, name, r))
    return base, axes, specs


def scoring_for(base: config.Recipe, metric: str | None, extractor, n: int, out: Path, echo=print) -> Scoring:
    """Mixtures: mode coverage. Images: ``metric`` (default ``class_coverage``) through the Evaluator, checked
    (plugin names, options, extractor weights) before any run starts."""
    from ..metrics_config import parse_extractor, validate
    from .evaluate import Evaluator

    source = registry.build("dataset", base.data.source, "data.source")
    mixture = hasattr(source, "means") and hasattr(source, "std")
    if mixture and metric in (None, "mode_coverage"):
        return Scoring("mixture", n)
    if mixture:
        raise ConfigError(f"--metric {metric}: {base.data.source['type']!r} is a 2D mixture; score it with "
                          "mode_coverage")
    if metric == "mode_coverage":
        raise ConfigError(f"--metric mode_coverage: needs a 2D mixture dataset, the recipe has "
                          f"{base.data.source['type']!r}")
    from .lab_report import metric_blocks

    cfg = MetricsConfig(compute=metric_blocks(metric or "class_coverage"), extractor=parse_extractor(extractor),
                        every=1, n=n, seed=EVAL_SEED, cache_dir=str(out / ".cache" / "features"))
    cfg = validate(cfg, config.check_plugin_block)
    ev = Evaluator(cfg, None, out)  # builds the metrics and extractors now: a missing weight file fails here
    # Extractors fitted to the data (class_coverage's classifier) are trained here, once, not by every worker
    source.prepare()
    ev.prepare(None, source, base.model.get("resolution", 0), base.model.get("channels", 3), echo)
    return Scoring("evaluator", n, cfg)


def _renderer(trainer, net: str):
    """G_ema's renderer (the task's) or the raw G's, in eval mode and without gradients."""
    import torch

    if net == "ema":
        return trainer.task.render
    G, arch = trainer.task.G_raw, trainer.arch

    def render(z):
        was = G.training
        G.eval()
        try:
            with torch.no_grad():
                out = arch.generate(G, z, 1.0) if hasattr(arch, "generate") else G(z)
                return arch.render_samples(out) if hasattr(arch, "render_samples") else out
        finally:
            G.train(was)

    return render


def score(trainer, scoring: Scoring, net: str) -> tuple[dict[str, float], np.ndarray | None]:
    import torch

    if scoring.kind == "mixture":
        metric = registry.get("metric", "mode_coverage", where="lab").obj.from_source(trainer.source)
        G = trainer.task.ema.model if net == "ema" else trainer.task.G_raw
        z = trainer.arch.sample_latents(scoring.n, generator=torch.Generator().manual_seed(EVAL_SEED))
        was = G.training
        G.eval()
        with torch.no_grad():
            x = G(z.to(next(G.parameters()).device)).float().cpu()
        G.train(was)
        return metric.compute(x), x.numpy()
    from .evaluate import Evaluator

    ev = Evaluator(scoring.metrics, trainer.arch, Path(scoring.metrics.cache_dir))
    res = ev.evaluate(trainer.accelerator, _renderer(trainer, net), trainer.source, trainer.task.resolution,
                      trainer.arch.channels, log=lambda s: None)
    return {k: v for k, v in res.items() if isinstance(v, float)}, None


def run_one(recipe_path: str, spec: RunSpec, scoring: Scoring, net: str, quiet: bool = True) -> LabResult:
    """Train one configuration through the real engine (resuming if its run directory has a checkpoint), then
    score G_ema (or G)."""
    from .. import run as run_mod

    t0 = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        trainer = run_mod.run(recipe_path, [], recipe=spec.recipe)
        if trainer.reason != "done":  # preempted (SIGTERM) or stopped early: scoring it would report a half G
            raise GanforgeError(f"lab run {spec.name} {trainer.reason} at step {trainer.step} before the end of "
                                "its schedule; the sweep stops (run the same command again to continue it)")
        # a run resumed or reused from an earlier sweep has no meaningful wall time of its own
        seconds = time.perf_counter() - t0 if trainer.start_step == 0 else math.nan
        metrics, samples = score(trainer, scoring, net)
    return LabResult(spec, metrics, seconds, trainer.step, samples)


def _worker_init():
    os.environ.setdefault("WANDB_MODE", "disabled")


def sweep(recipe_path: str, overrides: list[str], axes_args: dict, seeds: list[int], out: Path,
          jobs: int | None = None, n_samples: int = 2500, net: str = "ema", metric: str | None = None,
          extractor="inception_fid", echo=print) -> list[dict]:
    from . import lab_report

    base, axes, specs = plan(recipe_path, overrides, axes_args, seeds, out)
    if net == "ema" and base.train.ema_kimg <= 0:
        raise ConfigError("train.ema_kimg is 0 (no G_ema): evaluate G instead (--net g)")
    scoring = scoring_for(base, metric, extractor, n_samples, out, echo)
    jobs = max(1, min(jobs or usable_cores(), len(specs)))
    out.mkdir(parents=True, exist_ok=True)
    echo(f"lab: {len(specs)} runs ({len(specs) // len(seeds)} configurations x {len(seeds)} seeds) of "
         f"{recipe_path} on {base.data.source['type']}, {jobs} job(s); output in {out}")
    t0 = time.perf_counter()
    results: list[LabResult] = []

    def report(res: LabResult):
        results.append(res)
        took = f"{res.seconds:.0f} s" if math.isfinite(res.seconds) else "resumed or reused"
        echo(f"[{len(results)}/{len(specs)}] {' / '.join(res.spec.settings.values()) or 'recipe'} / seed "
             f"{res.spec.seed}: {lab_report.brief(res.metrics)} ({res.steps} steps, {took})")

    if jobs == 1:
        for spec in specs:
            report(run_one(recipe_path, spec, scoring, net))
    else:
        for spec in specs:  # each job its share of the cores: several runs of 2 threads on 2 cores thrash
            spec.recipe.train.threads = spec.recipe.train.threads or max(1, usable_cores() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
            futures = [pool.submit(run_one, recipe_path, s, scoring, net) for s in specs]
            for f in futures:
                try:
                    report(f.result())
                except GanforgeError:
                    for other in futures:
                        other.cancel()
                    raise
    return lab_report.write(results, axes, base, scoring, net, seeds, jobs, time.perf_counter() - t0, out,
                            recipe_path, overrides, echo)
