"""The training loop: schedule -> task's phases -> counters -> hooks. It knows no GAN: the task says what is
trained and how progress is counted; the schedule says the stage; hooks say what happens every N steps/kimg."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed

from ..errors import GanforgeError
from . import checkpoint, statefile
from .diagnostics import Watchdog
from .hooks import Hook, run_due
from .phases import run_phase
from .runlog import RunLog
from .samples import save_grid

# Preemption signals (the same pair as cli.py's start-up catcher). SIGUSR1 is what launch/slurm.sbatch asks
# SLURM for: SLURM delivers it to every process of the step, and unlike SIGTERM it does not kill DataLoader
# workers (torch gives them a SIGTERM handler that exits), nor does it make srun kill the step if srun gets it.
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class LoopState:
    """Counters that make a resumed run continue exactly; images as an int (summed float kimg drifts)."""

    def __init__(self):
        self.step, self.images, self.last_stats = 0, 0, {}
        self.nonfinite_streak = self.nonfinite_skipped = self.rollbacks = 0

    @property
    def kimg(self) -> float:
        return self.images / 1000

    def state_dict(self):
        return {"step": self.step, "images": self.images, "last_stats": dict(self.last_stats),
                "nonfinite_skipped": self.nonfinite_skipped, "rollbacks": self.rollbacks}

    def load_state_dict(self, s):
        self.step, self.images, self.last_stats = s["step"], s["images"], dict(s["last_stats"])
        self.nonfinite_skipped, self.rollbacks = s.get("nonfinite_skipped", 0), s.get("rollbacks", 0)


class Trainer:
    def __init__(self, components, accelerator, run_dir: Path):
        r, acc = components.recipe, accelerator
        self.components, self.recipe, self.accelerator, self.run_dir = components, r, acc, run_dir
        # what applications that score a generator read (lab, periodic evaluation); None for tasks without one
        self.arch, self.source = components.arch, components.source
        self.schedule = components.schedule(acc.num_processes)
        self.state, self.start_step, self.stats = LoopState(), 0, {}
        fmt = components.memory_format
        self.feed = components.make_feed(acc)  # the task's data stream (one that reads none gets an empty feed)
        self.task = components.make_task()
        self.task.setup(acc, self.feed, self.schedule.at(0.0), fmt)
        set_seed(r.seed, device_specific=True)  # each rank its own latents and noise from here on
        self.hooks = [Hook("log", self._log, r.log.every or None, r.log.every_kimg),
                      Hook("sample", self.sample, r.sample.every or None, r.sample.every_kimg, early=r.sample.early),
                      Hook("checkpoint", self._checkpoint_hook, r.checkpoint.every or None, r.checkpoint.every_kimg)]
        self.hooks += self.task.hooks()  # hooks the plugins declare (Hook records, same intervals)
        self.watchdog = Watchdog()
        self._saved_step = self._sampled_step = None

    def add_hook(self, hook: Hook) -> None:
        """Applications add their own periodic work (evaluation, export); it runs after the built-in hooks."""
        self.hooks.append(hook)

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
        all_ok = True
        for phase in self.task.plan(self.step, self.state.last_stats):
            stats, ok = run_phase(self.accelerator, phase, diagnose=self.diagnose_now())
            self.stats.update(stats)
            all_ok &= ok
        self.state.nonfinite_streak = 0 if all_ok else self.state.nonfinite_streak + 1
        self.state.nonfinite_skipped += not all_ok
        self.state.step += 1
        self.state.images += self.task.images_this_step()
        self.task.end_step(self.state.kimg, self.schedule.at(self.state.kimg))
        if self.task.needs_stats:
            self.state.last_stats = self.reduced_stats()  # one collective per step, for balancer and augment
            self.task.observe(self.step, self.state.last_stats)

    def fit(self) -> str:
        """Train to the schedule's length (``train.kimg``): "done"; "stopped" at ``train.max_steps`` or a hook's
        request; "preempted" when SIGTERM or SIGUSR1 arrived (every rank stops at the same step, after a checkpoint)."""
        r = self.recipe
        self.log = RunLog(self.accelerator, self.run_dir, self.schedule.total_kimg, self.state.kimg, r.log.wandb,
                          r.log.progress, resume_step=self.step, unit=self.components.progress_unit)
        self._signal = None  # before the handlers: one may run as soon as it is installed
        old = {s: signal.signal(s, self._on_signal) for s in PREEMPT_SIGNALS}
        # A signal during start-up (imports, build, resume) was caught by the CLI's first-line catcher (cli.py),
        # which exposes it as .signum: honour it here, or a preemption that came early would be lost.
        early = next((h.signum for h in old.values() if getattr(h, "signum", None)), None)
        self._signal = self._signal or early
        try:
            if r.train.max_steps is not None and self.step >= r.train.max_steps:
                return "stopped"
            if r.sample.early and self.step == 0:
                # The untrained G, before any step. Only a run that starts from scratch writes it: a resumed run
                # starts at its checkpoint's step (> 0), so the step-0 grid on disk is never rewritten. Same
                # branch on every rank (the step is), and sample() draws from no training RNG stream.
                self.sample()
            while self.state.kimg < self.schedule.total_kimg:  # the run's length, as the task counts it
                before = self.state.kimg
                self.train_step()
                if self.state.nonfinite_streak >= r.train.nonfinite_patience:
                    self._nonfinite_policy()
                    continue
                self.log.progress(self.state.kimg, step=self.step)
                stop = run_due(self.hooks, self.step, before, self.state.kimg)
                if self._signal is not None:
                    # set here, not in the handler: the handler runs between two bytecodes of any code (maybe
                    # mid-collective), and only this rank may have been signalled
                    self.accelerator.set_trigger()
                # Every rank, every step: check_trigger all-reduces the flag, so a signal that reached one rank
                # stops all of them at this same step (a rank that stopped alone would hang the others' next
                # collective).
                preempted = self.accelerator.check_trigger()
                at_max = bool(r.train.max_steps and self.step >= r.train.max_steps)
                if self.state.kimg >= self.schedule.total_kimg:
                    break  # the run is complete even if a signal came in its last step: "done", nothing to requeue
                if stop or preempted or at_max:
                    if self._saved_step != self.step:
                        self.save_checkpoint()
                    if preempted and not at_max:
                        got = signal.Signals(self._signal).name if self._signal else "a signal on another rank"
                        self.log.write(f"preempted ({got}): checkpoint at step {self.step}")
                        return "preempted"
                    return "stopped"
            if self._saved_step != self.step:  # the final state is always saved and sampled
                self.save_checkpoint()
            if self._sampled_step != self.step:
                self.sample()
            return "done"
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.log.close()

    def _nonfinite_policy(self) -> None:
        """K steps in a row with non-finite gradients: stop naming the last good checkpoint, or roll back to it
        with lower learning rates. Every rank reaches this at the same step (the flag follows all-reduced grads)."""
        r, found = self.recipe.train, None
        last = checkpoint.latest(self.ckpt_root)
        msg = (f"training diverged at step {self.step}: {self.state.nonfinite_streak} consecutive updates with "
               f"non-finite gradients (skipped)")
        if r.nonfinite_policy == "rollback" and self.state.rollbacks < r.max_rollbacks:
            found = checkpoint.load(self.ckpt_root, self.accelerator.process_index)
        if found is None:
            extra = f" after {self.state.rollbacks} rollback(s)" if r.nonfinite_policy == "rollback" else ""
            raise GanforgeError(f"{msg}{extra}; last good checkpoint: {last}")
        rollbacks = self.state.rollbacks + 1
        self.resume(found)
        # the checkpoint's lrs already include the factors of the rollbacks before it was written
        factor = r.rollback_lr_factor ** (rollbacks - self.state.rollbacks)
        self.state.rollbacks = rollbacks
        for sched in self.task.schedulers.values():
            sched.base_lrs = [lr * factor for lr in sched.base_lrs]
            for group, lr in zip(sched.optimizer.param_groups, sched.get_last_lr()):
                group["lr"] = lr * factor
        self.log.write(f"warning: {msg}; rolled back to {found[0].name} (rollback {rollbacks} of "
                       f"{r.max_rollbacks}), learning rates x{factor:g}")
        self.log.truncate_after(self.step)  # the diverged steps are not part of the run's history
        self.start_stream()

    def diagnose_now(self) -> bool:
        """Costlier diagnostics (gradient norms, diversity) only on the iteration that will be logged."""
        return bool(self.recipe.log.every) and (self.step + 1) % self.recipe.log.every == 0

    def _on_signal(self, signum, frame):
        # Only remember it: a second delivery (SLURM signals every process of a step, and torchrun forwards the
        # same signal again) must not change anything, and nothing here may block or print mid-write.
        if self._signal is None:
            self._signal = signum

    # ---- data and stages --------------------------------------------------------------------------------------
    def start_stream(self) -> None:
        self._enter_stage(self.schedule.at(self.state.kimg), quiet=True)

    def _enter_stage(self, stage, quiet: bool = False) -> None:
        if not quiet and self._sampled_step != self.step:
            self.sample()  # the last grid of the finishing stage: a run shows one grid per stage
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
                                 "data_skipped": int(skipped), "nonfinite_skipped": self.state.nonfinite_skipped,
                                 **({"warnings": warnings} if warnings else {})})
        # Non-finite statistics are logged as they are: the gradient guard (run_phase) already skipped any update
        # they would have poisoned, and the policy acts on consecutive skips (_nonfinite_policy).

    def sample(self) -> None:
        self._sampled_step = self.step
        if self.accelerator.is_main_process:
            # forked RNG: a grid drawn by one run and not by another (a resumed run skips the grid at the stage
            # change it resumed after) must not shift the random stream training draws from
            devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                imgs = self.task.render()
            grid = save_grid(imgs, self.run_dir / "samples" / f"step-{self.step:08d}.png")
            self.log.image(self.step, "samples", grid)

    # ---- checkpoint -------------------------------------------------------------------------------------------
    def _checkpoint_hook(self) -> None:
        self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        shared = {"loop": self.state.state_dict(), "feed": self.feed.state_dict(), "task": self.task.state_dict(),
                  "plugins": self.components.provenance()}
        if acc.scaler is not None:
            shared["scaler"] = acc.scaler.state_dict()
        per_rank = {"rng": statefile.capture_rng(), "skipped": self.feed.skipped}
        path = checkpoint.save(acc, self.ckpt_root, self.step, self.recipe.checkpoint.keep, shared, per_rank,
                               self.task.networks(), guard={"task": shared["task"]})
        self._saved_step = self.step
        return path

    def ensure_checkpoint(self) -> Path:
        """A checkpoint of the current step (written unless one already is). Collective: every rank calls it."""
        if self._saved_step != self.step:
            self.save_checkpoint()
        return self.ckpt_root / f"step-{self.step:08d}"

    def resume(self, found) -> None:
        path, shared, per_rank = found
        self.state.load_state_dict(shared["loop"])
        self.feed.load_state_dict(shared["feed"])
        self.task.load_state_dict(shared["task"])
        if self.accelerator.is_main_process:
            now = self.components.provenance()
            for block, then in (shared.get("plugins") or {}).items():
                if now.get(block, then) != then:  # a plugin package was upgraded (or replaced) between runs
                    print(f"warning: {block} was {then} when {path.name} was written; resuming with {now[block]}")
        if "scaler" in shared and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(shared["scaler"])
        if per_rank is None:
            if self.accelerator.is_main_process:
                print(f"warning: {path.name} has no RNG state for rank {self.accelerator.process_index} (the "
                      "number of processes changed): this rank continues with fresh random streams")
        else:
            statefile.restore_rng(per_rank["rng"])
            self.feed.skipped = per_rank["skipped"]
        self.start_step = self._saved_step = self.step  # that step is on disk: a finished run does not re-save it
