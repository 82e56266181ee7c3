"""Command line: ``ganforge run``, ``ganforge plugins``. User errors print one line and exit non-zero."""

from __future__ import annotations

import os
import signal
import sys
import threading

# "Preempted, requeue me": sysexits.h EX_TEMPFAIL. Returned when a run stopped because of SIGTERM/SIGUSR1 (after
# a checkpoint), never for train.max_steps (0). See docs/cluster.md.
EXIT_PREEMPTED = 75
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # the same pair as engine/loop.py (not imported: torch)


class _StartupCatcher:
    """Remembers the first preemption signal until Trainer.fit takes over (it reads ``signum``). Without it, a
    signal during imports, building or resuming would kill the process (the default action of both) with
    nothing saved, and under torchrun one rank dying takes the others down with it: a failure, not a
    preemption. Repeats are ignored: SLURM and torchrun may both deliver the same signal."""

    signum = None

    def __call__(self, signum, frame):
        if self.signum is None:
            self.signum = signum


def _catch_preemption() -> dict:
    """Install the catcher; returns the handlers it replaced ({} when already installed, or off the main
    thread, where signal.signal raises)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    if isinstance(signal.getsignal(signal.SIGTERM), _StartupCatcher):
        return {}
    catcher = _StartupCatcher()
    return {s: signal.signal(s, catcher) for s in PREEMPT_SIGNALS}


def _command(argv: list[str]) -> str | None:
    """The subcommand of ``ganforge [-p SPEC]... [--debug] COMMAND ...`` (None if there is none)."""
    i = 0
    while i < len(argv):
        if argv[i] in ("-p", "--plugin"):
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return argv[i]
    return None


# From the first line, before click and long before torch: only for the commands that train (`run`, `stylize`;
# other commands keep the default action, so `kill` still stops `ganforge data pack`).
if _command(sys.argv[1:]) in ("run", "stylize"):
    _catch_preemption()

import click  # noqa: E402

from . import cli_artifacts  # noqa: E402
from .cli_data import data  # noqa: E402
from .cli_eval import eval_cmd  # noqa: E402
from .cli_lab import lab  # noqa: E402
from .cli_plugins import plugins_cmd  # noqa: E402
from .cli_stylize import stylize  # noqa: E402
from .errors import GanforgeError  # noqa: E402


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--plugin", "plugin_specs", multiple=True, metavar="SPEC",
              help="Load a plugin package explicitly: an entry-point or distribution name, or a module path "
                   "(repeatable; with GANFORGE_DISABLE_PLUGIN_AUTOLOAD=1 only these and the built-ins load).")
@click.option("--debug", is_flag=True, help="Full tracebacks for plugin packages that fail to import.")
def cli(plugin_specs, debug):
    """ganforge: distributed, plugin-based GAN training."""
    if debug:
        os.environ["GANFORGE_DEBUG"] = "1"  # also for torchrun's ranks and DataLoader workers started later
    if plugin_specs:
        from . import registry

        for spec in plugin_specs:
            registry.request(spec)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the resolved recipe and exit.")
@click.option("--fresh", is_flag=True, help="Start over: move an existing run directory aside instead of resuming.")
@click.option("--data", "data_path", metavar="PATH",
              help="Train on your images: a folder (packed once into shards at the model's resolution, cached "
                   "under ~/.cache/ganforge/packs), a `ganforge data pack` folder, or a shard pattern / .tar. "
                   "The run is named <recipe>-<folder>.")
def run(recipe, overrides, dry_run, fresh, data_path):
    """Train from RECIPE (a YAML file) with optional dotted OVERRIDES such as train.batch_size=64.

    Exit status 75 when SIGTERM or SIGUSR1 stopped the run (a checkpoint was written; run it again to resume)."""
    # Done at import under `ganforge run ...`; here for main(argv) called from Python, whose own handlers come
    # back afterwards (a caller such as pytest must not be left ignoring SIGTERM).
    replaced = _catch_preemption()
    try:
        from .run import run as run_recipe

        trainer = run_recipe(recipe, list(overrides), dry_run=dry_run, fresh=fresh, data=data_path)
    finally:
        for s, h in replaced.items():
            signal.signal(s, h)
    if trainer is not None and trainer.reason == "preempted":
        sys.exit(EXIT_PREEMPTED)


cli.add_command(plugins_cmd)  # ganforge plugins [KIND] / plugins show NAME

cli.add_command(data)  # ganforge data pack / inspect
cli.add_command(lab)  # ganforge lab: the mode-collapse lab
cli.add_command(cli_artifacts.sample)  # ganforge sample / export / info: a finished run's outputs
cli.add_command(cli_artifacts.export)
cli.add_command(cli_artifacts.info)
cli.add_command(eval_cmd)  # ganforge eval: FID / KID / PR / IS offline
cli.add_command(stylize)  # ganforge stylize: neural style transfer on the same engine


def main(argv=None):
    """The process entry (``ganforge``, ``python -m ganforge``); with ``argv`` the in-process call tests use."""
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave(_exit_code(_main))
    _main(argv)


def _exit_code(fn) -> int:
    try:
        fn(None)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # an internal error: its traceback, as an ordinary exit would print it
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _leave(code: int):
    """End a launcher's worker without interpreter finalization. Why: gloo's worker threads may still be
    destroying the last collective's work, which holds tensors and so needs the GIL, when the main thread reaches
    Py_Finalize; a thread asking for the GIL then is stopped by pthread_exit, whose forced unwind crosses a
    noexcept destructor, and the rank aborts (SIGABRT, "terminate called without an active exception") after
    training ended and everything was saved -- about 1 in 30 two-process runs here, caught in a core dump. Nothing
    is lost by skipping finalization: checkpoints are fsynced, log lines are appended one open() each, trackers
    are finished by end_training; only buffered streams need flushing."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe must not turn the exit code into a traceback
            pass
    os._exit(code)


def _main(argv):
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
