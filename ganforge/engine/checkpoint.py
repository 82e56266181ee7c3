"""Atomic, verified checkpoints that never execute code when loaded.

Layout: ``<run>/checkpoints/step-00001000/`` holds ``state.safetensors`` + ``state.json`` (everything shared by
the ranks: modules, optimizers, schedulers, plugin state, counters; written by rank 0) and
``rank-00000.safetensors`` + ``.json`` per rank (RNG states, per-rank data counters), then ``manifest.json``
(sizes and SHA-256 of every file, written last). Nothing is pickled: safetensors and JSON only (statefile.py).
A checkpoint is written into ``.tmp-step-...`` and renamed only once every rank has finished and the manifest is
on disk, so a crash never leaves a half-written directory under a valid name. Resume takes the newest checkpoint
that verifies and says which newer ones it skipped and why.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import torch

from ..errors import GanforgeError
from . import statefile
from .statefile import CheckpointError

_STEP_DIR = re.compile(r"^step-(\d+)$")
FORMAT_VERSION = 2  # 1 was Accelerate's save_state (pickles); refused on resume with a line saying so


def checkpoint_dirs(root: Path) -> list[Path]:
    """Published checkpoints, oldest first (temp dirs from a crash are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(root: Path) -> Path | None:
    """The newest checkpoint that verifies (None if there is none)."""
    return statefile.newest_verified(checkpoint_dirs(root))[0]


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
        raise GanforgeError(f"ranks hold different weights (fingerprints {[p[:12] for p in prints]}): "
                            "a plugin or a custom phase broke data-parallel synchronisation")
    return prints


def _all_ok(accelerator, ok: bool) -> bool:
    """Collective: True when every rank succeeded. A rank that failed to write must not leave the others
    waiting at a barrier forever, nor let them publish a checkpoint that lacks its files."""
    flag = torch.tensor(0.0 if ok else 1.0, device=accelerator.device)
    return accelerator.reduce(flag, reduction="sum").item() == 0


def save(accelerator, root: Path, step: int, keep: int, shared: dict, per_rank: dict, modules=()) -> Path:
    """Every rank must call this (ranks write their own RNG state); returns the published directory."""
    bad = statefile.first_non_finite(shared)  # same tree on every rank, so every rank takes the same branch
    if bad is not None:
        raise GanforgeError(f"training diverged at step {step}: {bad} is not finite; checkpoint not written, "
                            f"last good one: {latest(root)}")
    prints = check_ranks_agree(accelerator, modules)
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    error = None
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)  # left by a crash mid-write
            tmp.mkdir()
        except OSError as e:
            error = CheckpointError(f"cannot write checkpoint {tmp}: {statefile.describe(e)}")
    if not _all_ok(accelerator, error is None):  # also the barrier: rank 1 writes only once tmp exists
        _raise(error, tmp)
    try:
        if accelerator.is_main_process:
            statefile.save_tree(tmp, "state", {"format": FORMAT_VERSION, **shared})
        statefile.save_tree(tmp, f"rank-{accelerator.process_index:05d}", per_rank)
    except CheckpointError as e:
        error = e
    if not _all_ok(accelerator, error is None):  # every rank's files are on disk before the manifest
        _cleanup(accelerator, tmp)
        _raise(error, tmp)
    if accelerator.is_main_process:
        try:
            statefile.write_manifest(tmp, {"step": step, "world_size": len(prints), "fingerprints": prints})
            if final.exists():  # same step saved before (stop at max_steps, then resume): replace atomically
                old = root / f".old-step-{step:08d}"
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
        except (OSError, CheckpointError) as e:
            error = e if isinstance(e, CheckpointError) else CheckpointError(
                f"cannot publish checkpoint {final}: {statefile.describe(e)}")
    if not _all_ok(accelerator, error is None):  # no rank proceeds (or exits) before the checkpoint is published
        _cleanup(accelerator, tmp)
        _raise(error, tmp)
    if accelerator.is_main_process:
        for stale in checkpoint_dirs(root)[:-keep]:
            if stale != final:  # never delete the one just verified-written (it may sort before a stale newer one)
                shutil.rmtree(stale, ignore_errors=True)
    return final


def _cleanup(accelerator, tmp: Path) -> None:
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a failed write took; the previous one stays


def _raise(error, tmp: Path):
    raise error or CheckpointError(f"another rank failed to write checkpoint {tmp}; see its message above")


def load(root: Path, rank: int) -> tuple[Path, dict, dict | None] | None:
    """The newest checkpoint that verifies and loads: (dir, shared tree, this rank's tree or None). Newer ones
    that fail are skipped with a warning naming them; None when there is no checkpoint at all. When
    checkpoints exist but none is usable: one line, exit 2."""
    dirs = checkpoint_dirs(root)
    if not dirs:
        return None
    for d in reversed(dirs):
        reason = statefile.verify(d)
        try:
            if reason is not None:
                raise CheckpointError(reason)
            shared = statefile.load_tree(d, "state")
            if not isinstance(shared, dict) or shared.get("format") != FORMAT_VERSION:
                raise CheckpointError(f"{d}: not a ganforge checkpoint of format {FORMAT_VERSION}")
            name = f"rank-{rank:05d}"
            per_rank = statefile.load_tree(d, name) if (d / f"{name}.json").exists() else None
            return d, shared, per_rank
        except CheckpointError as e:
            if rank == 0:
                print(f"warning: skipping checkpoint {d.name}: {e}")
    raise CheckpointError(f"{root}: no checkpoint verifies ({len(dirs)} found, newest {dirs[-1].name}); "
                          "pass --fresh to start over")
