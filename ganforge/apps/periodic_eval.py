"""Periodic evaluation during training: an ``evaluate`` hook on the Trainer (recipe ``metrics:`` block).

Each evaluation goes to ``log.jsonl`` and W&B (as ``metrics/<key>``) and to ``<run>/metrics.jsonl`` (one line
per evaluation, with the extractor's checksum). With ``metrics.best``, a new best value gets a checkpoint of its
own (unless one was just written) and ``checkpoints/best.json``; that checkpoint is kept besides the last K.
"""

from __future__ import annotations

import json

import torch

from ..engine import checkpoint
from ..engine.hooks import Hook
from ..engine.runlog import truncate_jsonl
from ..errors import GanforgeError
from .evaluate import Evaluator


def _better(evaluator: Evaluator, key: str, value: float, best: dict | None) -> bool:
    if best is None or best.get("metric") != key:
        return True
    return value > best["value"] if evaluator.higher_is_better(key) else value < best["value"]


def attach(trainer, evaluator: Evaluator) -> None:
    """Call after resume: rows of metrics.jsonl past the resumed step are dropped (they are evaluated again)."""
    cfg, acc, task = evaluator.cfg, trainer.accelerator, trainer.task
    path = trainer.run_dir / "metrics.jsonl"
    if acc.is_main_process:
        truncate_jsonl(path, trainer.step)

    def evaluate() -> None:
        res = evaluator.evaluate(acc, task.render, trainer.source, task.resolution, trainer.arch.channels,
                                 log=trainer.log.write)
        step, kimg = trainer.step, trainer.state.kimg
        numbers = {k: v for k, v in res.items() if isinstance(v, float)}
        trainer.log.log(step, {f"metrics/{k}": v for k, v in numbers.items()})
        trainer.log.write(f"metrics at step {step} ({kimg:.1f} kimg): "
                          + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()) + f" ({res['seconds']:.0f} s)")
        if acc.is_main_process:
            try:
                with path.open("a") as f:
                    f.write(json.dumps({"step": step, "kimg": kimg, **res}) + "\n")
            except OSError as e:
                raise GanforgeError(f"cannot write {path}: {e.strerror or e}") from None
        if cfg.best is None:
            return
        if cfg.best not in numbers:
            raise GanforgeError(f"metrics.best: {cfg.best!r} is not a result of metrics.compute "
                                f"(results: {', '.join(sorted(numbers))})")
        # The main process decides (only it reads best.json); the summed flag makes every rank take the same
        # branch, since ensure_checkpoint is a collective.
        main_says = acc.is_main_process and _better(evaluator, cfg.best, numbers[cfg.best],
                                                    checkpoint.read_best(trainer.ckpt_root))
        flag = torch.tensor(float(main_says), device=acc.device)
        better = acc.reduce(flag, reduction="sum").item() > 0
        if better:
            trainer.ensure_checkpoint()  # collective
            if acc.is_main_process:
                checkpoint.mark_best(trainer.ckpt_root, step, cfg.best, numbers[cfg.best],
                                     trainer.recipe.checkpoint.keep)

    trainer.add_hook(Hook("evaluate", evaluate, cfg.every or None, cfg.every_kimg))

