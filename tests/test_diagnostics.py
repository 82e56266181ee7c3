"""Diagnostics and the watchdog that turns them into warnings."""

import torch

from ganforge.engine import diagnostics
from ganforge.engine.diagnostics import Watchdog


def test_d_outputs_accuracy_and_means():
    s = diagnostics.d_outputs(torch.tensor([2.0, -1.0, 3.0, 1.0]), torch.tensor([-2.0, -1.0, 0.5, -4.0]))
    assert s["d_acc_real"] == 0.75 and s["d_acc_fake"] == 0.75
    assert s["d_real"] == 1.25 and s["d_fake"] == -1.625


def test_diversity_detects_collapse():
    real = torch.randn(32, 3, 8, 8)
    assert 0.8 < diagnostics.diversity(real, torch.randn(32, 3, 8, 8)) < 1.2
    collapsed = torch.randn(1, 3, 8, 8).expand(32, 3, 8, 8) + 1e-3 * torch.randn(32, 3, 8, 8)
    assert diagnostics.diversity(real, collapsed) < 0.01


def test_grad_norm_matches_flat_norm():
    m = torch.nn.Linear(3, 2)
    m(torch.randn(4, 3)).sum().backward()
    flat = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert torch.allclose(diagnostics.grad_norm(m), flat.norm())


def test_watchdog_warns_once_after_patience_and_rearms():
    w = Watchdog(patience=3, start_step=0)
    bad = {"diversity": 0.05, "d_acc_real": 0.5, "d_acc_fake": 0.5}
    good = {"diversity": 0.9, "d_acc_real": 0.5, "d_acc_fake": 0.5}
    assert [len(w.check(i, bad)) for i in range(5)] == [0, 0, 1, 0, 0]
    assert "mode collapse" in Watchdog(patience=1, start_step=0).check(7, bad)[0]
    w.check(5, good)
    assert [len(w.check(i, bad)) for i in range(3)] == [0, 0, 1]
    assert Watchdog(patience=1, start_step=100).check(99, bad) == []  # fresh G: no false alarm
    won = {"diversity": 0.9, "d_acc_real": 0.999, "d_acc_fake": 0.995, "d_real": 6.5, "d_fake": -6.0}
    msg = Watchdog(patience=1, start_step=0).check(3, won)
    assert len(msg) == 1 and "D has won" in msg[0] and "step 3" in msg[0] and "margin of 12.5" in msg[0]


def test_watchdog_is_quiet_on_a_healthy_confident_d():
    """The shipped DCGAN's log: D right on ~100% of a batch for most of the run, logits +-2..4, G improving."""
    w = Watchdog()
    rows = [{"diversity": 1.0, "d_acc_real": 1.0, "d_acc_fake": 1.0, "d_real": 3.4, "d_fake": -2.0}] * 20
    assert [m for i, r in enumerate(rows) for m in w.check(200 + 50 * i, r)] == []
