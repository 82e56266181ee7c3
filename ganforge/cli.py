"""Command line: ``ganforge run``, ``ganforge plugins``. User errors print one line and exit non-zero."""

from __future__ import annotations

import os
import sys

import click

from .cli_data import data
from .cli_lab import lab
from .errors import GanforgeError


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """ganforge: distributed, plugin-based GAN training."""


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the resolved recipe and exit.")
@click.option("--fresh", is_flag=True, help="Start over: move an existing run directory aside instead of resuming.")
def run(recipe, overrides, dry_run, fresh):
    """Train from RECIPE (a YAML file) with optional dotted OVERRIDES such as train.batch_size=64."""
    from .run import run as run_recipe

    run_recipe(recipe, list(overrides), dry_run=dry_run, fresh=fresh)


@cli.command()
def plugins():
    """List every registered plugin by kind, with where it came from."""
    from . import registry

    for kind in registry.KINDS:
        click.echo(f"{kind}:")
        items = registry.entries(kind)
        if not items:
            click.echo("  (none)")
        for e in items:
            click.echo(f"  {e.name:<16} {e.source}  {e.doc}")


cli.add_command(data)  # ganforge data pack / inspect
cli.add_command(lab)  # ganforge lab: the mode-collapse lab


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="ganforge", standalone_mode=False)
    except GanforgeError as e:
        if _is_rank0():
            click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
