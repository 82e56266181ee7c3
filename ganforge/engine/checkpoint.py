"""Atomic, verified checkpoints that never execute code when loaded.

Layout: ``<run>/checkpoints/step-00001000/`` holds ``state.safetensors`` + ``state.json`` (everything shared by
the ranks: modules, optimizers, schedulers, plugin state, counters; written by rank 0) and
``rank-00000.safetensors`` + ``.json`` per rank (RNG states, per-rank data counters), then ``manifest.json``
(sizes and SHA-256 of every file, written last). Nothing is pickled: safetensors and JSON only (statefile.py).
A checkpoint is written into ``.tmp-step-...`` and renamed only once every rank has finished and the manifest is
on disk, so a crash never leaves a half-written directory under a valid name. Resume takes the newest checkpoint
that verifies and says which newer ones it skipped and why. ``keep`` counts the checkpoints up to the one just
written; newer ones (skipped as corrupt on resume) are left until the run replaces them (``_prune``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch

from ..errors import GanforgeError
from . import statefile
from .statefile import CheckpointError

_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^\.(tmp|trash)-step-\d+$")  # a crash mid-write or mid-delete; never read, only removed
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


def save(accelerator, root: Path, step: int, keep: int, shared: dict, per_rank: dict, modules=(),
         guard: dict | None = None) -> Path:
    """Every rank must call this (ranks write their own RNG state); returns the published directory.
    ``guard``: the part of ``shared`` that must be finite (weights, EMA, optimizer state); default all of it."""
    bad = statefile.first_non_finite(shared if guard is None else guard)  # same on every rank: same branch
    if bad is not None:
        raise GanforgeError(f"training diverged at step {step}: {bad} is not finite; checkpoint not written, "
                            f"last good one: {latest(root)}")
    prints = check_ranks_agree(accelerator, modules)
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    error = None
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(root)  # a killed run's half-written checkpoints would hold space a full disk lacks
            if tmp.exists():
                shutil.rmtree(tmp)
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
            if final.exists() and _same_content(final, tmp):
                # A finished run re-run saves its last step again, byte for byte: keep the published copy and
                # skip the swap below, whose window between two renames would leave no step-N at all.
                shutil.rmtree(tmp)
            elif final.exists():  # a checkpoint of this step that failed to verify on resume: replace it
                old = root / f".old-step-{step:08d}"
                if old.exists():
                    shutil.rmtree(old)
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
        _prune(root, final, keep)
    return final


def _step(d: Path) -> int:
    return int(_STEP_DIR.match(d.name).group(1))


BEST = "best.json"  # {"metric", "value", "step", "dir"}: the checkpoint an evaluation chose; never pruned


def read_best(root: Path) -> dict | None:
    try:
        best = json.loads((root / BEST).read_text())
        return best if isinstance(best, dict) and isinstance(best.get("step"), int) else None
    except (OSError, ValueError):
        return None  # absent or cut short by a crash: no checkpoint is protected, none is lost either


def mark_best(root: Path, step: int, metric: str, value: float, keep: int) -> None:
    """Main process only, after checkpoint ``step`` is published. Atomic, so a crash leaves the old record or
    the new one. The previous best, no longer protected, is pruned at once unless it is one of the last ``keep``."""
    d = root / f"step-{step:08d}"
    if not d.is_dir():
        raise CheckpointError(f"cannot mark {d} as the best checkpoint: it does not exist")
    tmp = root / f".{BEST}.tmp"
    try:
        tmp.write_text(json.dumps({"metric": metric, "value": value, "step": step, "dir": d.name}) + "\n")
        tmp.replace(root / BEST)
    except OSError as e:
        raise CheckpointError(f"cannot write {root / BEST}: {statefile.describe(e)}") from None
    _prune(root, d, keep)


def _prune(root: Path, final: Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints up to the one just written. Newer ones can only be checkpoints that
    failed to verify when this run resumed (it resumes from the newest that verifies): they neither count toward
    ``keep`` (else corrupt leftovers would push out good ones) nor are deleted here; the run replaces each one
    as it passes its step. A stale one is renamed before it is removed, so a crash mid-delete never leaves a
    half-deleted directory under a checkpoint's name."""
    upto = [d for d in checkpoint_dirs(root) if _step(d) <= _step(final)]
    best = read_best(root)
    for stale in upto[:-keep]:
        if stale == final:  # cannot happen (final is the newest of upto), but it must never be the one deleted
            continue
        if best is not None and _step(stale) == best["step"]:
            continue  # kept in addition to the last `keep`
        trash = root / f".trash-{stale.name}"
        try:
            stale.rename(trash)
        except OSError:
            continue  # e.g. the mount went read-only: leave it, the next save tries again
        shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Temp and trash dirs of a crashed save or prune, and a replaced copy once its successor is published (an
    ``.old-step-N`` without ``step-N`` is kept: it may be the only copy left by a crash between two renames)."""
    for p in root.iterdir():
        if not p.is_dir() or p.is_symlink():
            continue
        if _LEFTOVER.match(p.name) or (p.name.startswith(".old-step-") and (root / p.name[5:]).is_dir()):
            shutil.rmtree(p, ignore_errors=True)


def _same_content(a: Path, b: Path) -> bool:
    try:
        ma, mb = statefile.read_manifest(a), statefile.read_manifest(b)
    except CheckpointError:
        return False
    return ma == mb and statefile.verify(a) is None


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
