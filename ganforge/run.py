"""``ganforge run``: recipe -> validated plugins -> run directory -> Accelerator -> Trainer.

Everything that can fail because of user input (recipe, plugin options, data URLs) is checked before the run
directory is created, so a bad command never leaves a half-made run behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import yaml

from . import config
from .build import build
from .engine import checkpoint
from .engine.statefile import describe
from .errors import GanforgeError


def _dotted(d: dict, key: str):
    for k in key.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _resume_guard(run_dir: Path, recipe, identity) -> None:
    """Refuse to resume a run whose model or data changed: its checkpoint would not fit or would mean nothing."""
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text()) if (run_dir / "recipe.yaml").is_file() else {}
    now = recipe.to_dict()
    # The blocks the task names (GAN: the model and the dataset) define what the checkpoint means; loader
    # options (workers, buffer) may change.
    for key in identity:
        old, new = _dotted(saved, key), _dotted(now, key)
        if old is not None and old != new:
            raise GanforgeError(f"{run_dir}: existing checkpoints were made with a different '{key}' block; "
                                "pass --fresh to start over or set name=... for a new run")


def _progress(components, trainer) -> str:
    """"12.3 kimg" for a GAN; the task's own unit otherwise ("40 steps" for style transfer)."""
    unit, scale = components.progress_unit
    return f"{trainer.state.kimg * scale:.{1 if scale == 1.0 else 0}f} {unit}"


def _backend(compile_opt: bool | str) -> str | None:
    """train.compile: true -> inductor, a string -> that torch.compile backend, false -> none."""
    if isinstance(compile_opt, str):
        return compile_opt
    return "inductor" if compile_opt else None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (a container or `taskset` may allow fewer than the machine's
    os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads(configured: int | None, cores: int, local_processes: int, current: int, gpu: bool) -> int | None:
    """Torch threads to set for this process, or None to leave them. ``train.threads`` wins. Otherwise, on a CPU
    machine, each local process gets its share of the cores when it has fewer: ``accelerate launch`` sets
    OMP_NUM_THREADS=1 for a single process unless told otherwise, which on a 2-core machine cost the default
    recipe a third of its speed (about 500 instead of 780 img/s, measured)."""
    if configured:
        return configured
    share = max(1, cores // max(1, local_processes))
    return share if not gpu and share > current else None


def preempt_marker(run_dir: Path) -> Path:
    """Where rank 0 writes the preemption marker: $GANFORGE_PREEMPT_MARKER, else <run dir>/PREEMPTED. Launchers
    (torchrun, accelerate launch) exit 1 whatever their workers returned, so a requeue script reads this file."""
    return Path(os.environ.get("GANFORGE_PREEMPT_MARKER") or run_dir / "PREEMPTED")


def _mark_preempted(accelerator, run_dir: Path, step: int) -> None:
    if accelerator.is_main_process:
        marker = preempt_marker(run_dir)
        tmp = marker.with_name(f".{marker.name}.tmp")
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"step": step, "run_dir": str(run_dir)}) + "\n")
            tmp.replace(marker)  # atomic: a requeue script never reads half a marker
        except OSError as e:
            raise GanforgeError(f"cannot write the preemption marker {marker}: {e.strerror}; the checkpoint of "
                                f"step {step} is complete") from None
    # No rank exits before the marker exists: the first exit makes torchrun (and srun --kill-on-bad-exit) kill
    # the rest, rank 0 included, and a preemption without its marker would read as a failure.
    accelerator.wait_for_everyone()


_LOCK = None  # the open lock file: held (flock) for the life of the process


def _lock(run_dir: Path) -> None:
    """One training process tree per run directory. An earlier launch whose workers outlived their launcher
    (kill -9 of torchrun leaves them running in their own sessions) would otherwise keep writing checkpoints and
    log lines into the directory the new launch resumes from."""
    import fcntl

    global _LOCK
    (run_dir / ".lock").touch()
    # Read-only and kept open on purpose: the lock lives as long as the process, and an fd open for writing would
    # keep the filesystem from being remounted read-only (EBUSY) while the run lives.
    f = open(run_dir / ".lock")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise GanforgeError(f"{run_dir}: another ganforge process is training in this run directory (its lock "
                            f"{run_dir / '.lock'} is held); stop it first, or set name=... for a new run") from None
    _LOCK = f


def _on_main(accelerator, fn, where: Path) -> None:
    """Run ``fn`` on the main process; a user-facing failure there (a read-only or full disk, a held lock) stops
    every rank with the same one line. A bare barrier would leave the other ranks waiting for rank 0 forever."""
    error = None
    if accelerator.is_main_process:
        try:
            fn()
        except GanforgeError as e:
            error = e
        except OSError as e:
            error = GanforgeError(f"cannot write {e.filename or where}: {describe(e)}")
    failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), reduction="sum")
    if failed.item() > 0:
        raise error or GanforgeError(f"{where}: the main process could not set up the run directory")


def run(recipe_path: str, overrides: list[str], dry_run: bool = False, fresh: bool = False, recipe=None,
        data: str | None = None):
    """Returns the finished Trainer (None for --dry-run) so scripts and tests can inspect the final state.
    ``recipe``: an already validated Recipe (the lab), instead of reading ``recipe_path``. ``data``: ``--data``,
    your images (a folder, packed once and cached) or shards, in place of the recipe's data.source."""
    recipe = recipe if recipe is not None else config.load_recipe(recipe_path, overrides)
    if data is not None:
        from .datatools.folder import use_data

        named = any(o.split("=", 1)[0].strip() == "name" for o in overrides)  # a name given wins
        use_data(recipe, data, prepare=not dry_run, rename=not named)
    components = build(recipe)  # every plugin, once; pre-flight included
    evaluator = None
    if recipe.metrics is not None:  # extractor weights are found (or refused) before any run dir exists
        from .apps.evaluate import Evaluator

        evaluator = Evaluator(recipe.metrics, components.arch, recipe.runs_dir)
    if dry_run:
        print(config.dump(recipe), end="")
        return None

    threads = cpu_threads(recipe.train.threads, usable_cores(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                          torch.get_num_threads(), torch.cuda.is_available())
    if threads:
        torch.set_num_threads(threads)
    if recipe.train.deterministic:
        torch.use_deterministic_algorithms(True)
    if recipe.log.wandb and "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"  # no key: write locally, `wandb sync` later (never hard-coded)

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    run_dir = Path(recipe.runs_dir) / recipe.name
    # Accelerate only goes multi-process on CPU (gloo) when told cpu=True; without it, torchrun's ranks on a
    # GPU-less machine would each train alone and overwrite one another's run directory.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # A growing network leaves the layers of later stages unused: DDP must look for unused parameters or it
    # waits forever for their gradients. Only then: the search costs a graph traversal per backward.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=components.schedule(1).grows)
    try:
        accelerator = Accelerator(mixed_precision=recipe.train.mixed_precision, cpu=multi_cpu,
                                  dynamo_backend=_backend(recipe.train.compile),
                                  log_with="wandb" if recipe.log.wandb else None, kwargs_handlers=[ddp],
                                  project_config=ProjectConfiguration(project_dir=str(run_dir)))
    except ValueError as e:
        raise GanforgeError(f"train.mixed_precision={recipe.train.mixed_precision!r}: {e}") from None
    components.prepare_data(accelerator)

    from .engine.loop import Trainer

    def existing_run():
        if fresh and run_dir.exists():
            aside = run_dir.with_name(f"{run_dir.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(aside)  # never delete a user's run: move it aside
            print(f"--fresh: moved the previous run to {aside}")
        elif checkpoint.checkpoint_dirs(run_dir / "checkpoints"):
            _resume_guard(run_dir, recipe, components.identity)

    _on_main(accelerator, existing_run, run_dir)  # also the barrier: no rank reads run_dir while rank 0 moves it
    found = checkpoint.load(run_dir / "checkpoints", accelerator.process_index)
    trainer = Trainer(components, accelerator, run_dir)
    def setup_run_dir():
        run_dir.mkdir(parents=True, exist_ok=True)
        _lock(run_dir)
        (run_dir / "recipe.yaml").write_text(config.dump(recipe))
        # a marker left by an earlier, preempted attempt must not make this one read as preempted if it fails
        if preempt_marker(run_dir).exists():  # (unlink(missing_ok) still fails with EROFS on a read-only disk)
            preempt_marker(run_dir).unlink()

    _on_main(accelerator, setup_run_dir, run_dir)
    if recipe.log.wandb:
        accelerator.init_trackers(recipe.log.project, config=recipe.to_dict(),
                                  init_kwargs={"wandb": {"dir": str(run_dir), "name": recipe.name}})
    if found is not None:
        trainer.resume(found)
        if accelerator.is_main_process:
            print(f"resuming from {found[0]} (step {trainer.step}, {_progress(components, trainer)})")
    if evaluator is not None:
        from .apps.periodic_eval import attach

        attach(trainer, evaluator)
    trainer.start_stream()
    try:
        reason = trainer.fit()
        trainer.reason = reason
        if reason == "preempted":  # before end_training: the marker's barrier needs the process group
            _mark_preempted(accelerator, run_dir, trainer.step)
    finally:
        accelerator.end_training()
    if accelerator.is_main_process:
        print(f"{reason}: step {trainer.step}, {_progress(components, trainer)}, run dir {run_dir} "
              f"({torch.get_num_threads()} torch threads per process)")
    return trainer
