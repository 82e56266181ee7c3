"""GANTask: adversarial training built from architecture + loss + regularizers + augment + balancer.

It owns G, D, G_ema, both optimizers and their lr schedulers, turns the balancer's plan ("D", "D", "G") into
Phase records (with lazy regularizers as phases of their own), says what one step consumed (reals shown to D)
and what a sample is. The loop knows none of this; it runs phases, hooks and the schedule.
"""

from __future__ import annotations

import torch

from ..api import PhaseContext, batch_size, finest, tree_map
from ..engine import diagnostics
from ..engine.ema import EMA
from ..engine.phases import Phase
from ..errors import GanforgeError
from .penalties import d_context, lazy_factor, lazy_groups, make_optimizer
from .targets import BETA2_PATHS, resolve_target


def _arch(arch, name: str, default):
    """Architecture plugins need not subclass api.Architecture: missing optional parts get the default."""
    return getattr(arch, name, default)


class GANTask:
    def __init__(self, c, recipe):
        self.arch, self.loss, self.balancer, self.augment = c.arch, c.loss, c.balancer, c.augment
        self.regularizers, self.recipe = c.regularizers, recipe
        self.needs_stats = self.balancer.needs_stats or bool(self.augment is not None and self.augment.needs_stats)
        self.counts = {"D": 0, "G": 0}  # main-phase runs: lazy regularizers fire on these
        self.resolution, self.alpha, self.lr_mult = self.arch.resolution, 1.0, 1.0
        self._d_runs, self.iteration = 0, 0

    # ---- build (once per run) ---------------------------------------------------------------------------------
    def setup(self, accelerator, feed, stage, memory_format=torch.contiguous_format) -> None:
        r, acc = self.recipe, accelerator
        self.acc, self.feed, self.memory_format = acc, feed, memory_format
        # Same seed on every rank while building, so G and D start identical everywhere (DDP would broadcast
        # rank 0's weights anyway, but the EMA copy and any non-DDP state must not depend on that).
        torch.manual_seed(r.seed)
        G = self.arch.build_generator().to(memory_format=memory_format)
        D = self.arch.build_discriminator().to(memory_format=memory_format)
        # Only trainable weights: a D may hold a frozen pretrained backbone (architecture ``projected``).
        opt_G = make_optimizer([p for p in G.parameters() if p.requires_grad], r.train.g_opt,
                               lazy_factor(self.regularizers, "G"))
        opt_D = make_optimizer([p for p in D.parameters() if p.requires_grad], r.train.d_opt,
                               lazy_factor(self.regularizers, "D"))
        self.G, self.D, self.opt_G, self.opt_D = acc.prepare(G, D, opt_G, opt_D)
        # The raw modules (no DDP, no torch.compile) serve EMA, checkpoints and the lazy penalties, whose double
        # backward neither DDP nor torch.compile can do.
        self.G_raw = acc.unwrap_model(self.G, keep_torch_compile=False)
        self.D_raw = acc.unwrap_model(self.D, keep_torch_compile=False)
        self.ema = EMA(self.G_raw, r.train.ema_kimg, r.train.ema_rampup)
        self.set_stage(stage)
        # torch lr schedulers driven by the schedule: the multiplier is a function of kimg that the loop hands
        # over before each scheduler step, so lr(step) is exactly the schedule's formula, on every rank.
        self.schedulers = {n: torch.optim.lr_scheduler.LambdaLR(o, lambda _: self.lr_mult)
                           for n, o in (("G", self.opt_G), ("D", self.opt_D))}
        self.main = {"D": self._d_phase(), "G": self._g_phase()}
        self.lazy = {p: [(self._reg_phase(p, regs), k) for k, regs in lazy_groups(self.regularizers, p).items()]
                     for p in ("D", "G")}
        g = torch.Generator().manual_seed(r.seed)
        self.fixed_z = self.arch.sample_latents(r.sample.n, generator=g).to(acc.device)

    def set_stage(self, stage) -> None:
        """Resolution, fade-in alpha, lr multiplier and scheduled scalars for this iteration."""
        self.resolution, self.alpha, self.lr_mult = stage.resolution, stage.alpha, stage.lr_mult
        for m in (self.G_raw, self.D_raw, self.ema.model):
            if hasattr(m, "set_stage"):
                m.set_stage(stage.resolution, stage.alpha)
        for path, value in stage.values.items():
            if path == "ema_kimg":
                self.ema.half_life_kimg = value
            elif path in BETA2_PATHS:
                self._set_beta2(BETA2_PATHS[path], value)
            else:
                obj, attr = resolve_target(self, path)
                setattr(obj, attr, value)

    def _set_beta2(self, net: str, value: float) -> None:
        """A scheduled Adam beta2 (R3GAN: 0.9 -> 0.99), with the lazy-regularization correction beta ** c."""
        c = lazy_factor(self.regularizers, net)
        for g in (self.opt_G if net == "G" else self.opt_D).param_groups:
            g["betas"] = (g["betas"][0], value ** c)

    def end_step(self, kimg: float, next_stage) -> None:
        """EMA update, then the lr schedulers step to the multiplier of the next iteration's kimg."""
        batch_images = self.feed.batch_size * self.recipe.train.grad_accum * self.acc.num_processes
        self.ema.update(self.G_raw, batch_images, kimg)
        self.lr_mult = next_stage.lr_mult
        for s in self.schedulers.values():
            s.step()

    def observe(self, step: int, stats: dict) -> None:
        """Rank-averaged statistics of the step (only when ``needs_stats``): adaptive augmentations follow them."""
        if self.augment is not None and self.augment.needs_stats:
            self.augment.update(step, stats)

    def hooks(self) -> list:
        """Hook records (ganforge.engine.hooks.Hook) that plugins declare through an optional ``hooks()``."""
        out = []
        for plugin in (self.arch, self.loss, self.balancer, self.augment, *self.regularizers):
            fn = getattr(plugin, "hooks", None)
            out += list(fn()) if callable(fn) else []
        return out

    def log_stats(self) -> dict:
        out = {f"lr_{n}": o.param_groups[0]["lr"] for n, o in (("G", self.opt_G), ("D", self.opt_D))}
        out |= {"resolution": self.resolution, "alpha": self.alpha}
        for plugin in (self.balancer, self.augment, *self.regularizers):
            if plugin is not None and hasattr(plugin, "log_stats"):
                out |= plugin.log_stats()
        return out

    # ---- samples ----------------------------------------------------------------------------------------------
    def render(self, z=None) -> torch.Tensor:
        """Images ``[N, C, H, W]`` in [-1, 1] for the grid: fixed latents through G_ema (eval mode)."""
        psi = self.recipe.sample.truncation_psi
        generate = _arch(self.arch, "generate", None)
        with torch.no_grad():
            z = self.fixed_z if z is None else z
            out = generate(self.ema.model, z, psi) if generate is not None else self.ema.model(z)
            render = _arch(self.arch, "render_samples", None)
            return render(out) if render is not None else out

    # ---- checkpoint -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        plugins = {"balancer": self.balancer, "augment": self.augment,
                   **{f"regularizers[{i}]": r for i, r in enumerate(self.regularizers)}}
        return {
            "modules": {"G": self.G_raw.state_dict(), "D": self.D_raw.state_dict(), "G_ema": self.ema.state_dict()},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "plugins": {k: p.state_dict() for k, p in plugins.items() if p is not None},
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, m in (("G", self.G_raw), ("D", self.D_raw)):
            m.load_state_dict(state["modules"][name])
        self.ema.load_state_dict(state["modules"]["G_ema"])
        self.opt_G.load_state_dict(state["optimizers"]["G"])
        self.opt_D.load_state_dict(state["optimizers"]["D"])
        for n, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][n])
        self._apply_changed_optimizer_settings()
        plugins = {"balancer": self.balancer, "augment": self.augment,
                   **{f"regularizers[{i}]": r for i, r in enumerate(self.regularizers)}}
        for key, p in plugins.items():
            if p is None:
                continue
            if key not in state["plugins"]:
                raise GanforgeError(f"checkpoint has no state for {key} ({type(p).__name__}): the recipe's "
                                    "plugins changed since it was written; pass --fresh to start over")
            p.load_state_dict(state["plugins"][key])
        self.counts = dict(state["counts"])

    def _apply_changed_optimizer_settings(self) -> None:
        """The recipe's lr/betas win over the checkpoint's on resume, with a line saying so: silently keeping the
        old ones (the optimizer state dict carries them) would ignore what the user just asked for. Schedule and
        rollback multipliers already applied to the old rate carry over to the new one."""
        r = self.recipe
        for net, key, opt in (("G", "g_opt", self.opt_G), ("D", "d_opt", self.opt_D)):
            cfg, c = getattr(r.train, key), lazy_factor(self.regularizers, net)
            lr, betas = cfg.lr * c, tuple(b ** c for b in cfg.betas)
            sched, changed = self.schedulers[net], []
            for i, g in enumerate(opt.param_groups):
                old_lr, old_betas = g["initial_lr"], tuple(g["betas"])
                if abs(old_lr - lr) > 1e-12 * lr:
                    scale = lr / old_lr
                    g["initial_lr"], g["lr"], sched.base_lrs[i] = lr, g["lr"] * scale, sched.base_lrs[i] * scale
                    changed.append(f"lr {old_lr / c:g} -> {cfg.lr:g}")
                scheduled = 1 if f"{key}.beta2" in r.schedule.values else 2  # the schedule sets beta2 each step
                if any(abs(a - b) > 1e-12 for a, b in zip(old_betas[:scheduled], betas[:scheduled])):
                    g["betas"] = betas
                    changed.append(f"betas {[round(b ** (1 / c), 6) for b in old_betas]} -> {list(cfg.betas)}")
            sched._last_lr = [g["lr"] for g in opt.param_groups]  # what get_last_lr() (and the log) report
            if changed and self.acc.is_main_process:
                print(f"train.{key}: changed since the checkpoint ({', '.join(dict.fromkeys(changed))}); "
                      "the new values apply from this step on")

    def networks(self) -> list:
        """Modules whose weights must agree across ranks (and be finite) before a checkpoint is published."""
        return [self.G_raw, self.D_raw, self.ema.model]

    # ---- phases -------------------------------------------------------------------------------------------
    def plan(self, step: int, stats: dict) -> list[Phase]:
        self.iteration = step  # what losses and penalties see as ctx.step
        names = self.balancer.plan(step, stats if self.balancer.needs_stats else {})
        out = []
        self._d_runs = 0
        for name in names:
            if name not in self.main:
                raise GanforgeError(f"balancer {self.recipe.balancer['type']!r} planned phase {name!r}; "
                                    f"phases are {sorted(self.main)}")
            out.append(self.main[name])
            out += [ph for ph, k in self.lazy[name] if self.counts[name] % k == 0]
            self.counts[name] += 1
            self._d_runs += name == "D"
        return out

    def images_this_step(self) -> int:
        """Progress is counted in reals D trained on (all ranks): every loss gets the same iterations per kimg."""
        self.step_images = self._d_runs * self.recipe.train.grad_accum * self.feed.batch_size * self.acc.num_processes
        return self.step_images

    def _aug(self, x):
        return tree_map(self.augment, x) if self.augment is not None else x

    def _real(self):
        real = self.feed.next()
        return _arch(self.arch, "prepare_real", lambda x, r, a: x)(real, self.resolution, self.alpha)

    def _latents(self, n: int):
        return self.arch.sample_latents(n, device=self.acc.device)

    def _penalties(self, regs, ctx_fn) -> tuple[torch.Tensor, dict]:
        total, stats = 0.0, {}
        for reg in regs:
            penalty, s = reg.penalty(ctx_fn(reg))
            total, stats = total + penalty, {**stats, **s}
        return total, stats

    def _folded(self, phase: str, ctx_fn) -> tuple[torch.Tensor, dict]:
        return self._penalties([r for r in self.regularizers if r.phase == phase and r.interval == 1], ctx_fn)

    def _d_reg_ctx(self, reg, real, fake):
        return d_context(reg, self.D_raw, lambda x: self.D_raw(self._aug(x)), real, fake, step=self.iteration,
                         G=self.G_raw, arch=self.arch)

    def _g_ctx(self):
        return PhaseContext(D=self.D_raw, G=self.G_raw, arch=self.arch, batch_size=self.feed.batch_size,
                            step=self.iteration)

    def _d_phase(self) -> Phase:
        def loss_fn(i):
            real = self._real()
            with torch.no_grad():
                fake = self.G(self._latents(batch_size(real)))  # no graph through G: this phase trains D only
            ctx = PhaseContext(D=self.D, real=real, fake=fake, real_logits=self.D(self._aug(real)),
                               fake_logits=self.D(self._aug(fake)), step=self.iteration)
            loss, stats = self.loss.d_loss(ctx)
            if i == 0:
                self.last_real, self.last_fake = real, fake
                penalty, pstats = self._folded("D", lambda reg: self._d_reg_ctx(reg, real, fake))
                loss, stats = loss + penalty, {**stats, **pstats}
            if self.augment is not None:
                stats.update(self.augment.observe(ctx.real_logits))
            return loss, {**stats, **diagnostics.d_outputs(ctx.real_logits, ctx.fake_logits)}

        def diagnose():
            return {"grad_norm_d": diagnostics.grad_norm(self.D_raw),
                    "diversity": diagnostics.diversity(finest(self.last_real), finest(self.last_fake))}

        return Phase("D", [self.D], self.opt_D, loss_fn, micro_batches=self.recipe.train.grad_accum,
                     diagnose=diagnose)

    def _g_phase(self) -> Phase:
        def loss_fn(i):
            real = self._real() if self.loss.needs_real_in_g else None  # advances the stream, not kimg
            fake = self.G(self._latents(self.feed.batch_size))
            ctx = PhaseContext(D=self.D, fake=fake, fake_logits=self.D(self._aug(fake)), step=self.iteration,
                               real=real, real_logits=self.D(self._aug(real)) if real is not None else None)
            loss, stats = self.loss.g_loss(ctx)
            if i == 0:
                penalty, pstats = self._folded("G", lambda reg: self._g_ctx())
                loss, stats = loss + penalty, {**stats, **pstats}
            return loss, stats

        return Phase("G", [self.G], self.opt_G, loss_fn, frozen=[self.D], micro_batches=self.recipe.train.grad_accum,
                     diagnose=lambda: {"grad_norm_g": diagnostics.grad_norm(self.G_raw)})

    def _reg_phase(self, phase: str, regs: list) -> Phase:
        """Lazy penalties of one interval as one phase of their own, x interval (same average strength as every
        step). D's take the samples of the D phase just run."""
        k, name = regs[0].interval, f"{phase}_reg:{'+'.join(type(r).__name__ for r in regs)}"
        if phase == "D":
            def loss_fn(i):
                penalty, stats = self._penalties(regs, lambda reg: self._d_reg_ctx(reg, self.last_real,
                                                                                    self.last_fake))
                return penalty * k, stats
            return Phase(name, [self.D_raw], self.opt_D, loss_fn, manual_sync=True)

        def g_loss_fn(i):
            penalty, stats = self._penalties(regs, lambda reg: self._g_ctx())
            return penalty * k, stats
        return Phase(name, [self.G_raw], self.opt_G, g_loss_fn, frozen=[self.D_raw], manual_sync=True)
