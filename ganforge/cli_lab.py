"""``ganforge lab``: the mode-collapse lab on the command line (see docs/lab.md)."""

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
@click.option("--loss", "losses", multiple=True, metavar="VARIANT",
              help="Loss to sweep (repeatable): a name, name:key=value,... or 'all'. Default: the recipe's.")
@click.option("--balancer", "balancers", multiple=True, metavar="VARIANT",
              help="Balancer to sweep (repeatable), same syntax. Default: the recipe's.")
@click.option("--seeds", default="5", show_default=True, help="Number of seeds (0..N-1) or a list (0,3,7).")
@click.option("--jobs", type=int, default=None, help="Runs in parallel (default: one per CPU core).")
@click.option("--samples", type=int, default=2500, show_default=True, help="Samples scored per run.")
@click.option("--net", type=click.Choice(["ema", "g"]), default="ema", show_default=True,
              help="Score G_ema or the raw G.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default runs/lab/<recipe>-<time>). Runs already in it resume or are reused.")
def lab(recipe, overrides, losses, balancers, seeds, jobs, samples, net, out):
    """Sweep losses x balancers x seeds of a 2D-mixture RECIPE and print modes covered, high-quality share and
    reverse KL (mean ± std over seeds), with scatter plots. OVERRIDES as in `ganforge run` (train.kimg=40)."""
    from .apps.lab import sweep

    if samples < 1:
        raise ConfigError(f"--samples: must be >= 1, got {samples}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    out_dir = Path(out) if out else Path("runs") / "lab" / f"{Path(recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep(recipe, list(overrides), list(losses), list(balancers), _seeds(seeds), out_dir, jobs=jobs,
          n_samples=samples, net=net, echo=click.echo)
