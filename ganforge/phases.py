"""The two adversarial phases. Each runs ``grad_accum`` micro-batches and one optimizer step.

Distributed hazards handled here (see docs/architecture notes):
- D's gradients are all-reduced once per phase: micro-batches before the last run under ``no_sync``.
- The G phase runs D forward with D frozen and under ``no_sync(D)``: D's DDP reducer must not wait for gradients
  that never come ("Expected to have finished reduction ...") nor waste an all-reduce.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from .api import PhaseContext


def _accumulate(stats_sum: dict, stats: dict, n: int) -> None:
    for k, v in stats.items():
        stats_sum[k] = stats_sum.get(k, 0.0) + v.detach().float() / n


def d_phase(t) -> dict:
    """D step: real images toward 1, fakes from a G that is not updated toward 0."""
    acc, G, D, n = t.accelerator, t.G, t.D, t.recipe.train.grad_accum
    D.requires_grad_(True)
    out: dict = {}
    for i in range(n):
        real = t.next_real()
        z = t.arch.sample_latents(real.shape[0], device=acc.device)
        with torch.no_grad(), acc.autocast():
            fake = G(z)  # no graph through G: this phase only trains D
        with ExitStack() as stack:
            if i < n - 1:
                stack.enter_context(acc.no_sync(D))  # all-reduce D's grads only on the last micro-batch
            with acc.autocast():
                ctx = PhaseContext(D=D, real=real, fake=fake, real_logits=D(real), fake_logits=D(fake), step=t.step)
                loss, stats = t.loss.d_loss(ctx)
            acc.backward(loss / n)
        _accumulate(out, stats, n)
    t.opt_D.step()
    t.opt_D.zero_grad(set_to_none=True)
    return out


def g_phase(t) -> dict:
    """G step: fakes through a frozen D; only G's gradients are computed and all-reduced."""
    acc, G, D, n = t.accelerator, t.G, t.D, t.recipe.train.grad_accum
    D.requires_grad_(False)  # no grads for D's weights: less memory, and nothing for D's reducer to expect
    out: dict = {}
    try:
        for i in range(n):
            z = t.arch.sample_latents(t.recipe.train.batch_size, device=acc.device)
            real = t.next_real() if t.loss.needs_real_in_g else None
            with ExitStack() as stack:
                stack.enter_context(acc.no_sync(D))  # D is frozen: its reducer must not take part
                if i < n - 1:
                    stack.enter_context(acc.no_sync(G))
                with acc.autocast():
                    fake = G(z)
                    ctx = PhaseContext(D=D, fake=fake, fake_logits=D(fake), step=t.step, real=real,
                                       real_logits=D(real) if real is not None else None)
                    loss, stats = t.loss.g_loss(ctx)
                acc.backward(loss / n)
            _accumulate(out, stats, n)
        t.opt_G.step()
        t.opt_G.zero_grad(set_to_none=True)
    finally:
        D.requires_grad_(True)
    return out


PHASES = {"D": d_phase, "G": g_phase}
