"""Atomic checkpoints on top of ``accelerator.save_state``.

Layout: ``<run>/checkpoints/step-00001000/`` holds Accelerate's files (G, D, both optimizers in ``prepare``
order, grad scaler, every rank's RNG) plus the custom objects registered for checkpointing (EMA, balancer, train
state with the data-stream position). A checkpoint is written into ``.tmp-step-...`` and renamed only once every
rank has finished writing, so a crash never leaves a half-written directory under a valid name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs from a crash are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def all_finite(modules, stats: dict) -> bool:
    for m in modules:
        for t in m.state_dict().values():
            if torch.is_floating_point(t) and not torch.isfinite(t).all():
                return False
    return all(math.isfinite(float(v)) for v in stats.values())


def fingerprint(modules) -> str:
    """SHA-256 of every parameter's bytes. Buffers are left out: batch-norm statistics legitimately differ
    between ranks after each rank's last forward (DDP re-broadcasts rank 0's at the next one)."""
    h = hashlib.sha256()
    for m in modules:
        for name, p in m.named_parameters():
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_ranks_agree(accelerator, modules) -> list[str]:
    """All ranks must hold identical weights; a mismatch means a rank-dependent plugin or a sync bug, and
    checkpointing rank 0's copy would hide it. Collective: every rank calls it."""
    from accelerate.utils import gather_object

    prints = gather_object([fingerprint(modules)])
    if len(set(prints)) > 1:
        from .errors import GanforgeError

        raise GanforgeError(f"ranks hold different weights (fingerprints {[p[:12] for p in prints]}): "
                            "a plugin or a custom phase broke data-parallel synchronisation")
    return prints


def save(accelerator, root: Path, step: int, keep: int, modules=()) -> Path:
    """Every rank must call this (ranks write their own RNG state); returns the final directory."""
    prints = check_ranks_agree(accelerator, modules)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a crash mid-write
    accelerator.wait_for_everyone()  # hazard: rank 1 must not write into a dir rank 0 is about to delete
    accelerator.save_state(output_dir=str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every rank's files are on disk before the rename publishes them
    if accelerator.is_main_process:
        (tmp / "ranks.json").write_text(json.dumps({"world_size": len(prints), "fingerprints": prints}))
        if final.exists():  # same step saved before (e.g. stop at max_steps then resume): replace it atomically
            old = root / f".old-step-{step:08d}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        for stale in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()  # no rank proceeds (or exits) before the checkpoint is published
    return final
