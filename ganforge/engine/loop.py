"""The training loop: schedule -> task's phases -> counters -> hooks. It knows no GAN: the task says what is
trained and how progress is counted; the schedule says the stage; hooks say what happens every N steps/kimg."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed

from ..errors import GanforgeError
from . import checkpoint, statefile
from .diagnostics import Watchdog
from .feed import Feed
from .hooks import Hook, run_due
from .phases import run_phase
from .runlog import RunLog
from .samples import save_grid


class LoopState:
    """Counters that make a resumed run continue exactly; images as an int (summed float kimg drifts)."""

    def __init__(self):
        self.step, self.images, self.last_stats = 0, 0, {}

    @property
    def kimg(self) -> float:
        return self.images / 1000

    def state_dict(self):
        return {"step": self.step, "images": self.images, "last_stats": dict(self.last_stats)}

    def load_state_dict(self, s):
        self.step, self.images, self.last_stats = s["step"], s["images"], dict(s["last_stats"])


class Trainer:
    def __init__(self, components, accelerator, run_dir: Path):
        r, acc = components.recipe, accelerator
        self.components, self.recipe, self.accelerator, self.run_dir = components, r, acc, run_dir
        self.arch, self.source = components.arch, components.source
        self.schedule = components.schedule(acc.num_processes)
        self.state, self.start_step, self.stats = LoopState(), 0, {}
        fmt = torch.channels_last if r.train.channels_last else torch.contiguous_format
        self.feed = Feed(self.source, channels=self.arch.channels, seed=r.seed, rank=acc.process_index,
                         world_size=acc.num_processes, workers=r.data.workers, xflip=r.data.xflip,
                         shuffle_buffer=r.data.shuffle_buffer, device=acc.device, memory_format=fmt)
        self.task = components.make_task()
        self.task.setup(acc, self.feed, self.schedule.at(0.0), fmt)
        set_seed(r.seed, device_specific=True)  # each rank its own latents and noise from here on
        self.hooks = [Hook("log", self._log, r.log.every or None, r.log.every_kimg),
                      Hook("sample", self.sample, r.sample.every or None, r.sample.every_kimg),
                      Hook("checkpoint", self._checkpoint_hook, r.checkpoint.every or None, r.checkpoint.every_kimg)]
        self.watchdog = Watchdog()
        self._saved_step = self._sampled_step = None

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"

    # ---- the loop ---------------------------------------------------------------------------------------------
    def train_step(self) -> None:
        stage = self.schedule.at(self.state.kimg)
        if stage.index != self.feed.stage:
            self._enter_stage(stage)
        self.task.set_stage(stage)
        for phase in self.task.plan(self.step, self.state.last_stats):
            self.stats.update(run_phase(self.accelerator, phase, diagnose=self.diagnose_now()))
        self.state.step += 1
        self.state.images += self.task.images_this_step()
        self.task.end_step(self.state.kimg, self.schedule.at(self.state.kimg))
        if self.task.needs_stats:
            self.state.last_stats = self.reduced_stats()  # one collective per step, for balancer and augment
            self.task.observe(self.step, self.state.last_stats)

    def fit(self) -> str:
        r = self.recipe
        self.log = RunLog(self.accelerator, self.run_dir, r.train.kimg, self.state.kimg, r.log.wandb, r.log.progress,
                          resume_step=self.step)
        old = signal.signal(signal.SIGTERM, self._on_signal)  # preemption: finish the step, checkpoint, exit
        try:
            if r.train.max_steps is not None and self.step >= r.train.max_steps:
                return "stopped"
            while self.state.kimg < r.train.kimg:
                before = self.state.kimg
                self.train_step()
                self.log.progress(self.state.kimg, step=self.step)
                stop = run_due(self.hooks, self.step, before, self.state.kimg)
                # checked every step: all ranks agree through one cheap all-reduce inside check_trigger
                if stop or self.accelerator.check_trigger() or (r.train.max_steps and self.step >= r.train.max_steps):
                    if self._saved_step != self.step:
                        self.save_checkpoint()
                    return "stopped"
            if self._saved_step != self.step:  # the final state is always saved and sampled
                self.save_checkpoint()
            if self._sampled_step != self.step:
                self.sample()
            return "done"
        finally:
            signal.signal(signal.SIGTERM, old)
            self.log.close()

    def diagnose_now(self) -> bool:
        """Costlier diagnostics (gradient norms, diversity) only on the iteration that will be logged."""
        return bool(self.recipe.log.every) and (self.step + 1) % self.recipe.log.every == 0

    def _on_signal(self, signum, frame):
        self.accelerator.set_trigger()

    # ---- data and stages --------------------------------------------------------------------------------------
    def start_stream(self) -> None:
        self._enter_stage(self.schedule.at(self.state.kimg), quiet=True)

    def _enter_stage(self, stage, quiet: bool = False) -> None:
        t0 = time.perf_counter()
        self.feed.open(stage.index, stage.resolution, stage.batch_size)
        self.task.set_stage(stage)
        if not quiet and self.accelerator.is_main_process:
            self.log.write(f"stage {stage.index}: {stage.resolution}x{stage.resolution}, batch {stage.batch_size} "
                           f"per process, at {self.state.kimg:.1f} kimg ({time.perf_counter() - t0:.2f} s to switch)")

    # ---- logging and samples ----------------------------------------------------------------------------------
    def reduced_stats(self) -> dict[str, float]:
        """Last statistics averaged over ranks (a collective: every rank must call it at the same step)."""
        if not self.stats:
            return {}
        keys = sorted(self.stats)  # same order on every rank, or the reduce mixes up values
        vec = torch.stack([torch.as_tensor(self.stats[k], dtype=torch.float32, device=self.accelerator.device)
                           for k in keys])
        return dict(zip(keys, self.accelerator.reduce(vec, reduction="mean").tolist()))

    def _log(self) -> None:
        acc = self.accelerator
        stats = {**self.reduced_stats(), **self.task.log_stats()}
        warnings = self.watchdog.check(self.step, stats)
        for w in warnings:
            self.log.write(w)
        skipped = acc.reduce(torch.tensor(self.feed.skipped, device=acc.device), reduction="sum")  # all ranks
        self.log.log(self.step, {**stats, "kimg": self.state.kimg, "img_per_s": self.log.rate(self.state.kimg),
                                 "data_skipped": int(skipped), **({"warnings": warnings} if warnings else {})})
        bad = {k: v for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            raise GanforgeError(f"training diverged at step {self.step}: non-finite statistics {bad}; "
                                           f"last good checkpoint: {checkpoint.latest(self.ckpt_root)}")

    def sample(self) -> None:
        self._sampled_step = self.step
        if self.accelerator.is_main_process:
            imgs = self.task.render()
            grid = save_grid(imgs, self.run_dir / "samples" / f"step-{self.step:08d}.png")
            self.log.image(self.step, "samples", grid)

    # ---- checkpoint -------------------------------------------------------------------------------------------
    def _checkpoint_hook(self) -> None:
        self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        shared = {"loop": self.state.state_dict(), "feed": self.feed.state_dict(), "task": self.task.state_dict()}
        if acc.scaler is not None:
            shared["scaler"] = acc.scaler.state_dict()
        per_rank = {"rng": statefile.capture_rng(), "skipped": self.feed.skipped}
        path = checkpoint.save(acc, self.ckpt_root, self.step, self.recipe.checkpoint.keep, shared, per_rank,
                               self.task.networks())
        self._saved_step = self.step
        return path

    def resume(self, found) -> None:
        path, shared, per_rank = found
        self.state.load_state_dict(shared["loop"])
        self.feed.load_state_dict(shared["feed"])
        self.task.load_state_dict(shared["task"])
        if "scaler" in shared and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(shared["scaler"])
        if per_rank is None:
            if self.accelerator.is_main_process:
                print(f"warning: {path.name} has no RNG state for rank {self.accelerator.process_index} (the "
                      "number of processes changed): this rank continues with fresh random streams")
        else:
            statefile.restore_rng(per_rank["rng"])
            self.feed.skipped = per_rank["skipped"]
        self.start_step = self.step
