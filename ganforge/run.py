"""``ganforge run``: recipe -> validated plugins -> run directory -> Accelerator -> Trainer.

Everything that can fail because of user input (recipe, plugin options, data URLs) is checked before the run
directory is created, so a bad command never leaves a half-made run behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import yaml

from . import config
from .build import build
from .engine import checkpoint
from .errors import DataError, GanforgeError


def _resume_guard(run_dir: Path, recipe: config.Recipe) -> None:
    """Refuse to resume a run whose model or data changed: its checkpoint would not fit or would mean nothing."""
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text()) if (run_dir / "recipe.yaml").is_file() else {}
    now = recipe.to_dict()
    # The model and the dataset define what the checkpoint means; loader options (workers, buffer) may change.
    for key, old, new in (("model", saved.get("model"), now["model"]),
                          ("data.source", (saved.get("data") or {}).get("source"), now["data"]["source"])):
        if old is not None and old != new:
            raise GanforgeError(f"{run_dir}: existing checkpoints were made with a different '{key}' block; "
                                "pass --fresh to start over or set name=... for a new run")


def _prepare_data(accelerator, source) -> None:
    # Embedded datasets write shards on first use: the local main process writes, the others wait for it.
    with accelerator.local_main_process_first():
        source.prepare()
    if source.batches(batch_size=1, seed=0, rank=0, world_size=1, start_batch=0) is None and not source.urls():
        raise DataError("data.source: the dataset produced no shard URLs")  # checked before the run dir exists


def run(recipe_path: str, overrides: list[str], dry_run: bool = False, fresh: bool = False, recipe=None):
    """Returns the finished Trainer (None for --dry-run) so scripts and tests can inspect the final state.
    ``recipe``: an already validated Recipe (the lab), instead of reading ``recipe_path``."""
    recipe = recipe if recipe is not None else config.load_recipe(recipe_path, overrides)
    components = build(recipe)  # every plugin, once; pre-flight included
    if dry_run:
        print(config.dump(recipe), end="")
        return None

    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
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
                                  dynamo_backend="inductor" if recipe.train.compile else None,
                                  log_with="wandb" if recipe.log.wandb else None, kwargs_handlers=[ddp],
                                  project_config=ProjectConfiguration(project_dir=str(run_dir)))
    except ValueError as e:
        raise GanforgeError(f"train.mixed_precision={recipe.train.mixed_precision!r}: {e}") from None
    _prepare_data(accelerator, components.source)

    from .engine.loop import Trainer

    if accelerator.is_main_process:
        if fresh and run_dir.exists():
            aside = run_dir.with_name(f"{run_dir.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(aside)  # never delete a user's run: move it aside
            print(f"--fresh: moved the previous run to {aside}")
        elif checkpoint.checkpoint_dirs(run_dir / "checkpoints"):
            _resume_guard(run_dir, recipe)
    accelerator.wait_for_everyone()  # no rank reads run_dir while rank 0 moves it
    found = checkpoint.load(run_dir / "checkpoints", accelerator.process_index)
    trainer = Trainer(components, accelerator, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(config.dump(recipe))
    accelerator.wait_for_everyone()
    if recipe.log.wandb:
        accelerator.init_trackers(recipe.log.project, config=recipe.to_dict(),
                                  init_kwargs={"wandb": {"dir": str(run_dir), "name": recipe.name}})
    if found is not None:
        trainer.resume(found)
        if accelerator.is_main_process:
            print(f"resuming from {found[0]} (step {trainer.step}, {trainer.state.kimg:.1f} kimg)")
    trainer.start_stream()
    try:
        reason = trainer.fit()
        trainer.reason = reason
    finally:
        accelerator.end_training()
    if accelerator.is_main_process:
        print(f"{reason}: step {trainer.step}, {trainer.state.kimg:.1f} kimg, run dir {run_dir}")
    return trainer
