"""The training engine: builds everything from a validated recipe and runs the adversarial loop."""

from __future__ import annotations

import inspect
import signal
from pathlib import Path

import torch
from accelerate.utils import set_seed

from . import checkpoint, registry
from .diagnostics import Watchdog
from .ema import EMA
from .errors import GanforgeError
from .phases import PHASES
from .runlog import RunLog
from .samples import save_grid
from .stream import ShardStream, make_loader


class TrainState:
    """Counters that make a resumed run continue exactly: iteration, kimg and the data-stream position."""

    def __init__(self):
        # images counted as an int: summing float kimg drifts and would add a stray step at the end
        self.step, self.images, self.batches, self.skipped, self.workers = 0, 0, 0, 0, None
        self.phase_steps = {"D": 0, "G": 0}  # lazy regularizers fire on these counts
        self.last_stats: dict = {}  # previous step's stats averaged over ranks (balancer input after a resume)

    @property
    def kimg(self) -> float:
        return self.images / 1000

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


class Checkpointed:
    """Everything ganforge (not Accelerate) must save, in ONE custom checkpoint object keyed by name, so that
    adding an augment or regularizer to a run does not shift the files Accelerate numbers by position."""

    def __init__(self, **parts):
        self.parts = {k: v for k, v in parts.items() if v is not None}

    def state_dict(self):
        return {k: v.state_dict() for k, v in self.parts.items()}

    def load_state_dict(self, state):
        for k, v in self.parts.items():
            if k in state:
                v.load_state_dict(state[k])
            else:
                print(f"warning: checkpoint has no '{k}' state; it starts fresh")


def _lazy_optimizer(params, opt_cfg, regs, phase):
    """Adam with StyleGAN2's lazy-regularization correction: with a penalty every k steps of this phase,
    lr *= c and betas **= c, c = k / (k + 1), so the effective step size matches every-step regularization."""
    c = 1.0
    for reg in regs:
        if reg.phase == phase and reg.interval > 1:
            c *= reg.interval / (reg.interval + 1)
    return torch.optim.Adam(params, lr=opt_cfg.lr * c, betas=tuple(b ** c for b in opt_cfg.betas), eps=opt_cfg.eps,
                            weight_decay=opt_cfg.weight_decay)


class Trainer:
    def __init__(self, recipe, accelerator, run_dir: Path, arch, source):
        self.recipe, self.accelerator, self.run_dir, self.arch, self.source = recipe, accelerator, run_dir, arch, source
        r, acc = recipe, accelerator
        self.loss = registry.build("loss", r.loss, "loss")
        self.balancer = registry.build("balancer", r.balancer, "balancer")
        self.augment = registry.build("augment", r.augment, "augment") if r.augment else None
        self.regularizers = [registry.build("regularizer", b, f"regularizers[{i}]")
                             for i, b in enumerate(r.regularizers)]
        # Same seed on every rank while building, so G and D start identical everywhere (DDP would broadcast
        # rank 0's weights anyway, but the EMA copy and any non-DDP state must not depend on that).
        torch.manual_seed(r.seed)
        G, D = arch.build_generator(), arch.build_discriminator()
        self.memory_format = torch.channels_last if r.train.channels_last else torch.contiguous_format
        G, D = G.to(memory_format=self.memory_format), D.to(memory_format=self.memory_format)
        opt_G = _lazy_optimizer(G.parameters(), r.train.g_opt, self.regularizers, "G")
        opt_D = _lazy_optimizer(D.parameters(), r.train.d_opt, self.regularizers, "D")
        # ONE prepare call in a fixed order: checkpoint file names (model, model_1, optimizer, optimizer_1)
        # follow it, so changing the order would load G's weights into D on resume.
        self.G, self.D, self.opt_G, self.opt_D = acc.prepare(G, D, opt_G, opt_D)
        # The raw modules (no DDP, no torch.compile) serve EMA, checkpoints and the lazy penalties, whose double
        # backward torch.compile cannot do.
        self.G_raw = acc.unwrap_model(self.G, keep_torch_compile=False)
        self.D_raw = acc.unwrap_model(self.D, keep_torch_compile=False)
        self.ema = EMA(self.G_raw, r.train.ema_kimg, r.train.ema_rampup)
        self.state = TrainState()
        self.start_step = 0  # where this process began (the checkpoint's step when resuming)
        regs = {f"regularizer{i}": reg for i, reg in enumerate(self.regularizers)}
        acc.register_for_checkpointing(Checkpointed(train=self.state, ema=self.ema, balancer=self.balancer,
                                                    augment=self.augment, **regs))
        # Each rank its own latents and noise from here on.
        set_seed(r.seed, device_specific=True)
        g = torch.Generator().manual_seed(r.seed)
        self.fixed_z = arch.sample_latents(r.sample.n, generator=g).to(acc.device)
        self.sample_kwargs = {}
        if r.sample.truncation_psi != 1.0:
            if "truncation_psi" not in inspect.signature(self.G_raw.forward).parameters:
                raise GanforgeError(f"sample.truncation_psi: the generator of architecture "
                                    f"{r.model['type']!r} does not support truncation")
            self.sample_kwargs["truncation_psi"] = r.sample.truncation_psi
        self.stats: dict = {}
        self._stop_signal = False
        self.watchdog = Watchdog()

    # ---- data -------------------------------------------------------------------------------------------------
    def start_stream(self):
        r, acc = self.recipe, self.accelerator
        if self.state.workers not in (None, r.data.workers) and acc.is_main_process:
            print(f"warning: data.workers changed ({self.state.workers} -> {r.data.workers}) since the "
                  "checkpoint; the stream continues in a new random order")
        self.state.workers = r.data.workers
        direct = self.source.batches(batch_size=r.train.batch_size, seed=r.seed, rank=acc.process_index,
                                     world_size=acc.num_processes, start_batch=self.state.batches)
        if direct is not None:
            self.data_iter = iter(direct)
            return
        stream = ShardStream(self.source.urls(), batch_size=r.train.batch_size, resolution=self.arch.resolution,
                             channels=self.arch.channels, seed=r.seed, rank=acc.process_index,
                             world_size=acc.num_processes, num_workers=r.data.workers,
                             start_batch=self.state.batches, xflip=r.data.xflip,
                             shuffle_buffer=r.data.shuffle_buffer)
        # Not passed through accelerator.prepare: the stream is already split per rank and worker, and
        # Accelerate would shard it a second time (silently dropping data) or dispatch it from rank 0.
        # Creating a DataLoader iterator draws from the global RNG; fork it so a resumed run (which creates the
        # iterator after restoring RNG states) draws the same latents as an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            self.data_iter = iter(make_loader(stream))

    def next_real(self, counts_toward_kimg: bool = True) -> torch.Tensor:
        """The next real batch. kimg counts the reals D trains on; the reals a relativistic loss shows D in the
        G phase still advance the stream position (resume) but not the schedule, so every loss gets the same
        number of iterations for the same kimg."""
        batch = next(self.data_iter)
        self.state.batches += 1
        self.state.skipped += int(batch["skipped"])
        self._real_batches += counts_toward_kimg
        real = batch["image"].to(self.accelerator.device, non_blocking=True)
        return real.to(memory_format=self.memory_format) if real.dim() == 4 else real

    @property
    def step(self) -> int:
        return self.state.step

    def diagnose_now(self) -> bool:
        """Costlier diagnostics (gradient norms, diversity) only on the iteration that will be logged."""
        return (self.step + 1) % self.recipe.log.every == 0

    # ---- checkpoint ------------------------------------------------------------------------------------------
    def resume(self, ckpt: Path) -> None:
        self.accelerator.load_state(str(ckpt))
        self.start_step = self.state.step
        self.accelerator.project_configuration.iteration = self.state.step  # load_state does not restore it

    def save_checkpoint(self) -> Path | None:
        stats = self.reduced_stats()
        if not checkpoint.all_finite([self.G_raw, self.D_raw], stats):
            raise GanforgeError(f"training diverged at step {self.step} (non-finite loss or weights); "
                                f"checkpoint not written, last good one: {checkpoint.latest(self.ckpt_root)}")
        modules = [self.G_raw, self.D_raw, self.ema.model]
        return checkpoint.save(self.accelerator, self.ckpt_root, self.step, self.recipe.checkpoint.keep, modules)

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"

    # ---- logging ---------------------------------------------------------------------------------------------
    def reduced_stats(self) -> dict[str, float]:
        """Last statistics averaged over ranks (a collective: every rank must call it at the same step)."""
        if not self.stats:
            return {}
        keys = sorted(self.stats)  # same order on every rank, or the reduce mixes up values
        vec = torch.stack([torch.as_tensor(self.stats[k], dtype=torch.float32, device=self.accelerator.device)
                           for k in keys])
        vec = self.accelerator.reduce(vec, reduction="mean")
        return dict(zip(keys, vec.tolist()))

    def sample(self) -> None:
        if self.accelerator.is_main_process:
            with torch.no_grad():
                imgs = self.ema.model(self.fixed_z, **self.sample_kwargs)
                render = getattr(self.arch, "render_samples", None)  # plugins need not subclass Architecture
                imgs = render(imgs) if render is not None else imgs
            grid = save_grid(imgs, self.run_dir / "samples" / f"step-{self.step:08d}.png")
            self.log.image(self.step, "samples", grid)

    def _stop_requested(self) -> bool:
        flag = torch.tensor(float(self._stop_signal), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)  # all ranks stop together

    # ---- the loop ---------------------------------------------------------------------------------------------
    def train_step(self) -> None:
        """One iteration: the balancer's phases, then EMA and counters."""
        r, world = self.recipe, self.accelerator.num_processes
        self._real_batches = 0
        for phase in self.balancer.plan(self.step, self.state.last_stats if self.balancer.needs_stats else {}):
            self.stats.update(PHASES[phase](self))
        self.state.step += 1
        self.state.images += self._real_batches * r.train.batch_size * world
        self.ema.update(self.G_raw, r.train.batch_size * r.train.grad_accum * world, self.state.kimg)
        if self.balancer.needs_stats or (self.augment is not None and self.augment.needs_stats):
            self.state.last_stats = self.reduced_stats()  # one collective per step for balancer and augment
            if self.augment is not None and self.augment.needs_stats:
                self.augment.update(self.step, self.state.last_stats)

    def fit(self) -> str:
        r = self.recipe
        self.log = RunLog(self.accelerator, self.run_dir, r.train.kimg, self.state.kimg, r.log.wandb, r.log.progress)
        old_handler = signal.signal(signal.SIGTERM, self._on_signal)  # cluster preemption: checkpoint, exit
        try:
            if r.train.max_steps is not None and self.step >= r.train.max_steps:
                return "stopped"
            while self.state.kimg < r.train.kimg:
                self.train_step()
                self.log.progress(self.state.kimg, step=self.step)
                reason = self._periodic()
                if reason:
                    return reason
            if self.step % r.checkpoint.every:  # the final state is always saved
                self.save_checkpoint()
            if self.step % r.sample.every:
                self.sample()
            return "done"
        finally:
            signal.signal(signal.SIGTERM, old_handler)
            self.log.close()

    def _periodic(self) -> str | None:
        r, step = self.recipe, self.step
        if step % r.log.every == 0:
            stats = {**self.reduced_stats(), **self.balancer.log_stats()}
            warnings = self.watchdog.check(step, stats)
            for w in warnings:
                self.log.write(w)
            skipped = self.accelerator.reduce(torch.tensor(self.state.skipped, device=self.accelerator.device),
                                              reduction="sum")  # every rank's undecodable samples, in total
            self.log.log(step, {**stats, "kimg": self.state.kimg, "img_per_s": self.log.rate(self.state.kimg),
                                "data_skipped": int(skipped), **({"warnings": warnings} if warnings else {})})
            if not all(map(_finite, stats.values())):
                raise GanforgeError(f"training diverged at step {step}: non-finite statistics "
                                    f"{ {k: v for k, v in stats.items() if not _finite(v)} }; last good "
                                    f"checkpoint: {checkpoint.latest(self.ckpt_root)}")
        if step % r.sample.every == 0:
            self.sample()
        stop = (r.train.max_steps is not None and step >= r.train.max_steps) or (
            step % r.log.every == 0 and self._stop_requested())
        if step % r.checkpoint.every == 0 or stop:
            self.save_checkpoint()
        if stop:
            return "stopped"
        return None

    def _on_signal(self, signum, frame):
        self._stop_signal = True


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")
