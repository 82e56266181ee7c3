"""The two adversarial phases. Each runs due lazy regularizers, ``grad_accum`` micro-batches and one optimizer step.

Distributed hazards handled here:
- A network's gradients are all-reduced once per phase: regularizer passes and every micro-batch but the last
  run under ``no_sync``; their gradients accumulate locally and the last (synced) backward all-reduces the sum.
- The G phase runs D forward with D frozen and under ``no_sync(D)``: D's DDP reducer must not wait for gradients
  that never come ("Expected to have finished reduction ...") nor waste an all-reduce.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from . import diagnostics
from .api import PhaseContext


def _accumulate(stats_sum: dict, stats: dict, n: int) -> None:
    for k, v in stats.items():
        stats_sum[k] = stats_sum.get(k, 0.0) + v.detach().float() / n


def _aug(t, x):
    return t.augment(x) if t.augment is not None else x


def _regularize(t, phase: str, ctx_fn, no_sync_nets, out: dict) -> None:
    """Run the regularizers of ``phase`` that are due (lazy: every ``interval`` steps of that phase)."""
    acc = t.accelerator
    count = t.state.phase_steps[phase]
    for reg in t.regularizers:
        if reg.phase != phase or count % reg.interval:
            continue
        with ExitStack() as stack:
            for net in no_sync_nets:
                stack.enter_context(acc.no_sync(net))
            with acc.autocast():
                penalty, stats = reg.penalty(ctx_fn())
            acc.backward(penalty * reg.interval)  # x interval: same average strength as every-step
        _accumulate(out, stats, 1)


def d_phase(t) -> dict:
    """D step: real images toward 1, fakes from a G that is not updated toward 0."""
    acc, G, D, n = t.accelerator, t.G, t.D, t.recipe.train.grad_accum
    D.requires_grad_(True)
    out: dict = {}
    reals = [t.next_real() for _ in range(n)]

    def reg_ctx():  # R1-style: gradients w.r.t. reals (before augmentation, as in StyleGAN2-ADA)
        real = reals[0].detach().requires_grad_(True)
        return PhaseContext(D=t.D_raw, real=real, real_logits=t.D_raw(_aug(t, real)), step=t.step,
                            G=t.G_raw, arch=t.arch, batch_size=real.shape[0])

    _regularize(t, "D", reg_ctx, [D], out)
    for i, real in enumerate(reals):
        z = t.arch.sample_latents(real.shape[0], device=acc.device)
        with torch.no_grad(), acc.autocast():
            fake = G(z)  # no graph through G: this phase only trains D
        with ExitStack() as stack:
            if i < n - 1:
                stack.enter_context(acc.no_sync(D))  # all-reduce D's grads only on the last micro-batch
            with acc.autocast():
                ctx = PhaseContext(D=D, real=real, fake=fake, real_logits=D(_aug(t, real)),
                                   fake_logits=D(_aug(t, fake)), step=t.step)
                loss, stats = t.loss.d_loss(ctx)
            acc.backward(loss / n)
        stats["d_real_sign"] = ctx.real_logits.detach().float().sign().mean()  # ADA's overfitting signal
        stats.update(diagnostics.d_outputs(ctx.real_logits, ctx.fake_logits))
        _accumulate(out, stats, n)
    if t.diagnose_now():
        out["grad_norm_d"] = diagnostics.grad_norm(t.D_raw)
        out["diversity"] = diagnostics.diversity(reals[-1], fake)
    t.opt_D.step()
    t.opt_D.zero_grad(set_to_none=True)
    t.state.phase_steps["D"] += 1
    return out


def g_phase(t) -> dict:
    """G step: fakes through a frozen D; only G's gradients are computed and all-reduced."""
    acc, G, D, n, bs = t.accelerator, t.G, t.D, t.recipe.train.grad_accum, t.recipe.train.batch_size
    D.requires_grad_(False)  # no grads for D's weights: less memory, and nothing for D's reducer to expect
    out: dict = {}
    try:
        _regularize(t, "G", lambda: PhaseContext(D=t.D_raw, G=t.G_raw, arch=t.arch, batch_size=bs, step=t.step),
                    [G, D], out)
        for i in range(n):
            z = t.arch.sample_latents(bs, device=acc.device)
            real = t.next_real(counts_toward_kimg=False) if t.loss.needs_real_in_g else None
            with ExitStack() as stack:
                stack.enter_context(acc.no_sync(D))  # D is frozen: its reducer must not take part
                if i < n - 1:
                    stack.enter_context(acc.no_sync(G))
                with acc.autocast():
                    fake = G(z)
                    ctx = PhaseContext(D=D, fake=fake, fake_logits=D(_aug(t, fake)), step=t.step, real=real,
                                       real_logits=D(_aug(t, real)) if real is not None else None)
                    loss, stats = t.loss.g_loss(ctx)
                acc.backward(loss / n)
            _accumulate(out, stats, n)
        if t.diagnose_now():
            out["grad_norm_g"] = diagnostics.grad_norm(t.G_raw)
        t.opt_G.step()
        t.opt_G.zero_grad(set_to_none=True)
    finally:
        D.requires_grad_(True)
    t.state.phase_steps["G"] += 1
    return out


PHASES = {"D": d_phase, "G": g_phase}
