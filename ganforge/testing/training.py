"""Contracts of the kinds that shape a training step: ``loss``, ``balancer`` and ``augment``."""

from __future__ import annotations

from pathlib import Path

import torch

from ..api import PhaseContext
from ._common import assert_checkpointable, assert_has, build, checking, options


def check_loss(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """``d_loss`` is a scalar that is lower when D scores reals high and fakes low than the other way round, with
    scalar stats; ``g_loss`` is finite and falls as D scores the fakes higher (its gradient on every fake logit is
    negative). Returns the built loss."""
    with checking("loss", name) as entry:
        loss = build(entry, options(entry, opts))
        assert_has(loss, ("needs_real_in_g", "d_loss", "g_loss"), "Loss")
        D = torch.nn.Linear(4, 1)
        good_real, bad_fake = torch.full((8,), 3.0), torch.full((8,), -3.0)
        d_good, stats = loss.d_loss(PhaseContext(D=D, fake=torch.zeros(8, 4), fake_logits=bad_fake,
                                                 real=torch.zeros(8, 4), real_logits=good_real))
        d_bad, _ = loss.d_loss(PhaseContext(D=D, fake=torch.zeros(8, 4), fake_logits=good_real,
                                            real=torch.zeros(8, 4), real_logits=bad_fake))
        assert d_good.dim() == 0, f"d_loss must return a scalar, got shape {tuple(d_good.shape)}"
        assert d_good < d_bad, \
            f"D's loss must fall when D separates real from fake (separated {d_good:.4g}, swapped {d_bad:.4g})"
        assert all(v.dim() == 0 for v in stats.values()), f"d_loss stats must be scalar tensors: {stats}"
        # D scores the fakes as fakes (< 0): every loss must push those scores up (LSGAN only pulls toward its
        # target)
        logits = (-2 * torch.rand(8)).requires_grad_(True)
        real = torch.randn(8) if loss.needs_real_in_g else None
        g, _ = loss.g_loss(PhaseContext(D=D, fake=torch.zeros(8, 4), fake_logits=logits, real_logits=real))
        g.backward()
        assert torch.isfinite(g) and logits.grad is not None and (logits.grad < 0).all(), \
            "G's loss must fall as D scores fakes higher"
        return loss


STATS = {"loss_d": 0.5, "loss_g": 1.0, "d_real": 1.0, "d_fake": -1.0}


def check_balancer(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """``plan`` returns a non-empty list of "D"/"G"; a fresh instance given ``state_dict()`` plans exactly what
    the original plans from then on (resume). Returns the built balancer."""
    with checking("balancer", name) as entry:
        opts = options(entry, opts)
        a = build(entry, opts)
        assert_has(a, ("needs_stats", "plan", "state_dict", "load_state_dict"), "Balancer")
        plans = [a.plan(i, STATS) for i in range(5)]
        assert all(p and set(p) <= {"D", "G"} for p in plans), f"plans must be non-empty lists of 'D'/'G': {plans}"
        assert_checkpointable(a.state_dict())
        b = build(entry, opts)
        b.load_state_dict(a.state_dict())
        assert [a.plan(i, STATS) for i in range(5, 10)] == [b.plan(i, STATS) for i in range(5, 10)], \
            "a balancer restored from state_dict() must plan exactly like the original"
        return a


def check_augment(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """Differentiable and shape-preserving; random per call from torch's global RNG (so a resumed run replays
    it); a state that survives a ``state_dict`` round trip (ADA's p), after which the copy augments exactly like
    the original. Returns the built augment."""
    with checking("augment", name) as entry:
        opts = options(entry, opts)
        aug = build(entry, opts)
        assert_has(aug, ("needs_stats", "observe", "state_dict", "load_state_dict"), "Augment")
        x = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_(True)
        y = aug(x)
        assert y.shape == x.shape and torch.isfinite(y).all(), f"output {tuple(y.shape)} must be finite, like input"
        (y * torch.randn_like(y)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, "not differentiable"
        torch.manual_seed(1)
        a = aug(x.detach())
        torch.manual_seed(1)
        b = aug(x.detach())
        torch.manual_seed(2)
        c = aug(x.detach())
        assert torch.equal(a, b), "same global RNG state must give the same augmentation (resume replays it)"
        assert not torch.equal(a, c), "augmentation must be random per call (give contract_options a p > 0)"
        if getattr(aug, "needs_stats", False):
            for step in range(16):
                aug.update(step, {"ada_signal": 1.0, "loss_d": 0.1})
        assert_checkpointable(aug.state_dict())
        fresh = build(entry, opts)
        fresh.load_state_dict(aug.state_dict())
        assert fresh.state_dict() == aug.state_dict(), "state_dict() does not survive load_state_dict()"
        torch.manual_seed(3)
        a = aug(x.detach())
        torch.manual_seed(3)
        assert torch.equal(a, fresh(x.detach())), "a restored augment must behave exactly like the saved one"
        return aug
