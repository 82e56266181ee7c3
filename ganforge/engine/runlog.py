"""Run logging: one JSONL line per log step, Accelerate's trackers (wandb), and a progress bar — main process only."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import GanforgeError
from .statefile import describe


class RunLogError(GanforgeError):
    """log.jsonl cannot be read or written (full disk, read-only mount): one line naming the file."""


def _fail(path: Path, what: str, e: OSError) -> RunLogError:
    return RunLogError(f"cannot {what} {path}: {describe(e)}")


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the rows of a JSONL run file (log.jsonl, metrics.jsonl) whose ``step`` is past ``step``: they were
    written by a run that died before its next checkpoint, and the resumed run writes those steps again. The
    file then reads as one uninterrupted run."""
    try:
        if not path.is_file():
            return
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        raise _fail(path, "read", e) from None
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by kill -9: always past the checkpoint
    if len(keep) != len(lines):
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_text("".join(x + "\n" for x in keep))
            tmp.replace(path)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)  # a full disk must not also keep half a copy of the log
            except OSError:
                pass
            raise _fail(tmp, "write", e) from None


class RunLog:
    def __init__(self, accelerator, run_dir: Path, total_kimg: float, start_kimg: float, use_tracker: bool,
                 progress: bool, resume_step: int = 0, unit: tuple[str, float] = ("kimg", 1.0)):
        self.acc = accelerator
        self.main = accelerator.is_main_process
        self.path = run_dir / "log.jsonl"
        if self.main:
            self.truncate_after(resume_step)
        self.use_tracker = use_tracker
        self.bar = None
        # What the progress bar counts: kimg (GANs), or the task's own unit as a multiple of kimg (a style run's
        # steps: 1000 per kimg, shown as whole numbers)
        self.unit, self.scale = unit
        if self.main and progress:
            self.total = total_kimg
            digits = 1 if self.scale == 1.0 else 0
            self.bar = tqdm(total=total_kimg * self.scale, initial=min(start_kimg, total_kimg) * self.scale,
                            unit=self.unit, dynamic_ncols=True,
                            bar_format=f"{{l_bar}}{{bar}}| {{n:.{digits}f}}/{{total:.{digits}f}} {self.unit} "
                            "[{elapsed}<{remaining}{postfix}]")
        self._t0 = time.perf_counter()
        self._kimg0 = start_kimg
        self.last_rate = 0.0

    def truncate_after(self, step: int) -> None:
        if self.main:
            truncate_jsonl(self.path, step)

    def progress(self, kimg: float, step: int) -> None:
        if self.bar is not None:
            self.bar.update(min(kimg, self.total) * self.scale - self.bar.n)
            rate = "img/s" if self.scale == 1.0 else f"{self.unit}/s"
            post = {"step": step} | ({rate: f"{self.last_rate:.{2 if self.scale != 1.0 else 0}f}"}
                                     if self.last_rate else {})
            self.bar.set_postfix(post, refresh=False)

    def rate(self, kimg: float) -> float:
        """Images per second since the previous call (all ranks together)."""
        now = time.perf_counter()
        r = (kimg - self._kimg0) * 1000 / max(now - self._t0, 1e-9)
        self._t0, self._kimg0 = now, kimg
        self.last_rate = r
        return r

    def log(self, step: int, values: dict) -> None:
        if not self.main:
            return
        # 7 significant digits: short lines, yet a learning rate of 1.9559e-4 survives (6 decimals would not)
        row = {"step": step, **{k: (float(f"{v:.7g}") if isinstance(v, float) else v) for k, v in values.items()}}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # ENOSPC, EROFS, EIO: one line naming the file, not a traceback
            raise _fail(self.path, "write", e) from None
        if self.use_tracker:  # trackers get the numbers; warnings (text) stay in log.jsonl and the console
            self.acc.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def image(self, step: int, name: str, grid: np.ndarray) -> None:
        if not (self.main and self.use_tracker):
            return
        import wandb  # imported lazily: only when the tracker is on

        self.acc.log({name: wandb.Image(grid)}, step=step)

    def write(self, msg: str) -> None:
        if self.main:
            (tqdm.write if self.bar is not None else print)(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
