"""Every loss against values computed by hand (plain Python math, not torch) on fixed logits; WGAN-GP's
penalty against analytic critics."""

import math

import pytest
import torch

from ganforge import registry
from ganforge.api import PhaseContext
from ganforge_plugins.losses.wgan_gp import gradient_penalty

R, F = [2.0, -1.0], [0.5, -3.0]  # D's logits on two reals and two fakes


def sp(x):  # softplus
    return math.log1p(math.exp(x))


def mean(xs):
    return sum(xs) / len(xs)


def relu(x):
    return max(x, 0.0)


MR, MF = mean(R), mean(F)  # 0.5, -1.25
RT, FT = [r - MF for r in R], [f - MR for f in F]  # relativistic: [3.25, 0.25], [0.0, -3.5]

EXPECTED = {  # loss name -> (D loss, G loss)
    "nonsaturating": (mean([sp(-r) for r in R]) + mean([sp(f) for f in F]), mean([sp(-f) for f in F])),
    "minimax": (mean([sp(-r) for r in R]) + mean([sp(f) for f in F]), -mean([sp(f) for f in F])),
    "hinge": (1.75, 1.25),  # mean(relu(1 - [2, -1])) + mean(relu(1 + [.5, -3])) = 1 + .75;  -mean(F)
    "least_squares": (3.5625, 4.0625),  # .5 mean([1, 4]) + .5 mean([.25, 9]);  .5 mean([.25, 16])
    "ragan": (mean([sp(-r) for r in RT]) + mean([sp(f) for f in FT]),
              mean([sp(-f) for f in FT]) + mean([sp(r) for r in RT])),
    "rahinge": (0.875, 5.5),  # mean([0, .75]) + mean([1, 0]);  mean([1, 4.5]) + mean([4.25, 1.25])
    # pairs (2, .5) and (-1, -3): D softplus(f - r), G softplus(r - f)
    "rpgan": (mean([sp(f - r) for r, f in zip(R, F)]), mean([sp(r - f) for r, f in zip(R, F)])),
}


def ctx(phase: str, needs_real: bool = True):
    r, f = torch.tensor(R), torch.tensor(F)
    if phase == "D" or needs_real:
        return PhaseContext(D=torch.nn.Identity(), real=torch.zeros(2, 2), fake=torch.zeros(2, 2),
                            real_logits=r, fake_logits=f)
    return PhaseContext(D=torch.nn.Identity(), fake=torch.zeros(2, 2), fake_logits=f)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loss_matches_hand_computed_value(name):
    loss = registry.build("loss", {"type": name})
    d, d_stats = loss.d_loss(ctx("D"))
    g, g_stats = loss.g_loss(ctx("G", loss.needs_real_in_g))
    exp_d, exp_g = EXPECTED[name]
    assert d.item() == pytest.approx(exp_d, abs=1e-6) and g.item() == pytest.approx(exp_g, abs=1e-6)
    assert d_stats["loss_d"].item() == pytest.approx(exp_d, abs=1e-6) and not d_stats["loss_d"].requires_grad
    assert g_stats["loss_g"].item() == pytest.approx(exp_g, abs=1e-6)


def test_relativistic_losses_ask_for_real_logits_in_g():
    assert {e.name for e in registry.entries("loss") if e.obj.needs_real_in_g} == {"ragan", "rahinge", "rpgan"}


def test_least_squares_targets():
    loss = registry.build("loss", {"type": "least_squares", "fake_target": -1.0, "real_target": 1.0,
                                   "g_target": 0.0})
    d, _ = loss.d_loss(ctx("D"))
    g, _ = loss.g_loss(ctx("G"))
    assert d.item() == pytest.approx(0.5 * mean([1, 4]) + 0.5 * mean([2.25, 4]))
    assert g.item() == pytest.approx(0.5 * mean([0.25, 9]))


def test_wgan_without_penalty_is_the_critic_gap():
    loss = registry.build("loss", {"type": "wgan_gp", "gp_weight": 0.0})
    d, stats = loss.d_loss(ctx("D"))
    g, _ = loss.g_loss(ctx("G"))
    assert d.item() == pytest.approx(MF - MR) and stats["wdist"].item() == pytest.approx(MR - MF)
    assert g.item() == pytest.approx(-MF) and "gp" not in stats


class Linear(torch.nn.Module):
    """D(x) = x . w (inputs grouped in ``pack``s): its gradient is w everywhere, so ||grad|| = ||w||."""

    def __init__(self, w, pack=1):
        super().__init__()
        self.w, self.pack = torch.nn.Parameter(torch.tensor(w)), pack

    def forward(self, x):
        return x.reshape(x.shape[0] // self.pack, -1) @ self.w


def test_gradient_penalty_analytic_linear_critic():
    # ||w|| = 5 everywhere: penalty (5 - 1)^2 = 16 wherever the interpolates fall; the D loss adds 10 x 16.
    torch.manual_seed(0)
    D = Linear([3.0, 4.0])
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    assert gradient_penalty(D, real, fake).item() == pytest.approx(16.0)
    loss = registry.build("loss", {"type": "wgan_gp"})
    c = PhaseContext(D=D, real=real, fake=fake, real_logits=D(real), fake_logits=D(fake))
    d, stats = loss.d_loss(c)
    wdist = (D(real).mean() - D(fake).mean()).item()
    assert stats["gp"].item() == pytest.approx(16.0) and d.item() == pytest.approx(-wdist + 160.0, rel=1e-6)
    # create_graph: the penalty trains the critic. d/dw of 10 (||w|| - 1)^2 = 20 (||w|| - 1) w / ||w||.
    D.w.grad = None
    (10 * gradient_penalty(D, real, fake)).backward()
    assert torch.allclose(D.w.grad, 20 * 4 * torch.tensor([3.0, 4.0]) / 5)


def test_gradient_penalty_analytic_quadratic_critic():
    # D(x) = ||x||^2 / 2 has gradient x: with real == fake == p every interpolate is p, penalty (||p|| - 1)^2.
    D = lambda x: 0.5 * (x ** 2).sum(1)
    p = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.0]])
    assert gradient_penalty(D, p, p).item() == pytest.approx(mean([16.0, 0.0, 1.0]))
    assert gradient_penalty(D, p, p, center=0.0).item() == pytest.approx(mean([25.0, 1.0, 0.0]))


def test_gradient_penalty_is_per_logit_with_packing():
    # PacGAN: one logit sees 2 samples; its gradient is w over both: ||(1, 1, 1, 1)|| = 2 -> penalty 1.
    D = Linear([1.0, 1.0, 1.0, 1.0], pack=2)
    assert gradient_penalty(D, torch.randn(8, 2), torch.randn(8, 2)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("block, needle", [
    ({"type": "hinge", "margin": 0.0}, "margin must be > 0"),
    ({"type": "wgan_gp", "gp_weight": -1.0}, "gp_weight must be >= 0"),
    ({"type": "least_squares", "fake_target": 1.0}, "must differ"),
])
def test_bad_loss_values_are_one_line_errors(block, needle):
    from ganforge.errors import PluginError

    with pytest.raises(PluginError, match=needle) as e:
        registry.build("loss", block, "loss")
    assert str(e.value).startswith(f"loss: loss plugin '{block['type']}'") and "\n" not in str(e.value)


@pytest.mark.parametrize("loss", ["nonsaturating", "ragan"])
def test_kimg_counts_the_reals_d_trains_on(tmp_path, monkeypatch, loss):
    """A relativistic loss also shows D a real batch in the G phase: the stream moves on (two batches per
    iteration), but the schedule counts D's reals only, so both losses run the same number of iterations."""
    from conftest import ROOT

    from ganforge import run as run_mod

    monkeypatch.setenv("WANDB_MODE", "disabled")
    t = run_mod.run(str(ROOT / "recipes/lab_ring8.yaml"), [
        f"runs_dir={tmp_path}", f"loss.type={loss}", "train.batch_size=16", "train.kimg=0.16", "log.every=5",
        "log.progress=false", "model.g_width=8", "model.d_width=8", "checkpoint.every=100", "sample.every=100"])
    assert t.reason == "done" and t.step == 10 and t.state.images == 160
    assert t.feed.samples == (20 if loss == "ragan" else 10) * 16


def test_rpgan_pairs_one_to_one_and_refuses_a_mismatch():
    """Pairing is element-wise: swapping two fakes changes the loss (a mean-based loss would not notice)."""
    loss = registry.build("loss", {"type": "rpgan"})
    r, f = torch.tensor(R), torch.tensor(F)
    swapped = PhaseContext(D=torch.nn.Identity(), real_logits=r, fake_logits=f.flip(0))
    d, _ = loss.d_loss(swapped)
    assert d.item() == pytest.approx(mean([sp(f - r) for r, f in zip(R, F[::-1])]), abs=1e-6)
    assert d.item() != pytest.approx(EXPECTED["rpgan"][0], abs=1e-3)
    with pytest.raises(ValueError, match="one to one"):
        loss.d_loss(PhaseContext(D=torch.nn.Identity(), real_logits=r, fake_logits=torch.zeros(3)))
