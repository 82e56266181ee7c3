"""``ganforge lab``: sweeps of recipe settings x seeds, scored by a metric plugin (see docs/lab.md)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .errors import ConfigError


def _seeds(text: str) -> list[int]:
    """``5`` -> seeds 0..4; ``3,7,11`` -> exactly those."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a count (5) or a list (0,3,7)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: need at least one seed, without repeats")
    return seeds


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("recipe", default="recipes/lab_grid25.yaml")
@click.argument("overrides", nargs=-1)
@click.option("--set", "sets", multiple=True, metavar="KEY=V1,V2",
              help="A recipe key to sweep (repeatable): train.g_opt.lr=1e-4,2e-4, loss.type=hinge,nonsaturating.")
@click.option("--loss", "losses", multiple=True, metavar="VARIANT",
              help="Loss to sweep (repeatable): a name, name:key=value,... or 'all'.")
@click.option("--balancer", "balancers", multiple=True, metavar="VARIANT",
              help="Balancer to sweep (repeatable), same syntax.")
@click.option("--seeds", default="5", show_default=True, help="Number of seeds (0..N-1) or a list (0,3,7).")
@click.option("--metric", default=None,
              help="Metric plugin(s) scoring each run: mode_coverage on 2D mixtures (the default there), "
              "class_coverage on labelled images (the default there), fid, kid, pr, or a YAML list of blocks.")
@click.option("--extractor", default="inception_fid", show_default=True,
              help="Extractor for metrics that do not bring their own (fid, kid, pr): as in `ganforge eval`.")
@click.option("--jobs", type=int, default=None, help="Runs in parallel (default: one per CPU core).")
@click.option("--samples", type=int, default=2500, show_default=True, help="Samples scored per run.")
@click.option("--net", type=click.Choice(["ema", "g"]), default="ema", show_default=True,
              help="Score G_ema or the raw G.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default runs/lab/<recipe>-<time>). Runs already in it resume or are reused.")
def lab(recipe, overrides, sets, losses, balancers, seeds, metric, extractor, jobs, samples, net, out):
    """Sweep settings x seeds of RECIPE, score every run and print mean ± std per setting, with a plot of each
    score against each setting (and scatter plots on 2D mixtures). OVERRIDES as in `ganforge run`."""
    from .apps.lab import sweep
    from .cli_eval import _extractor_spec

    if samples < 2:
        raise ConfigError(f"--samples: must be >= 2, got {samples}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    out_dir = Path(out) if out else Path("runs") / "lab" / f"{Path(recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    axes = {"set": list(sets), "loss": list(losses), "balancer": list(balancers)}
    sweep(recipe, list(overrides), axes, _seeds(seeds), out_dir, jobs=jobs, n_samples=samples, net=net,
          metric=metric, extractor=_extractor_spec(extractor), echo=click.echo)
