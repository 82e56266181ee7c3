"""R2 and how D-side penalties are served: declared inputs, lazy phases shared by interval, average strength."""

import pytest
import torch
from conftest import QuadraticD, run_cli, tiny_recipe, write_recipe

from ganforge import config
from ganforge.api import PhaseContext
from ganforge.errors import ConfigError
from ganforge.run import run
from ganforge.tasks.penalties import check_inputs, d_context, lazy_factor
from ganforge_plugins.regularizers.r1 import R1
from ganforge_plugins.regularizers.r2 import R2


def test_r2_equals_the_analytic_value_on_fakes_only():
    torch.manual_seed(0)
    D, gamma = QuadraticD(), 2.5
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4).requires_grad_(True)
    ctx = PhaseContext(D=D, real=real, real_logits=D(real), fake=fake, fake_logits=D(fake))
    penalty, stats = R2(gamma=gamma).penalty(ctx)
    x, a = fake.detach(), D.a.detach()
    expected = gamma / 2 * (a * x).square().flatten(1).sum(1).mean()
    assert torch.allclose(penalty, expected, rtol=1e-6) and torch.allclose(stats["r2_penalty"], expected)
    penalty.backward()
    assert torch.allclose(D.a.grad, gamma * a * x.square().mean(0), rtol=1e-5)
    # R1 on the same context is the reals' penalty (reals here do not require grad: a clear error, not R2's value)
    with pytest.raises(ValueError, match="r1 needs the D phase's reals"):
        R1(gamma=gamma).penalty(ctx)
    with pytest.raises(ValueError, match="r2 needs the D phase's fakes"):
        R2().penalty(PhaseContext(D=D, real=real.requires_grad_(True), real_logits=D(real)))


def test_one_lazy_phase_per_interval_and_its_adam_correction():
    assert lazy_factor([R1(interval=16), R2(interval=16)], "D") == pytest.approx(16 / 17)
    assert lazy_factor([R1(interval=16), R2(interval=4)], "D") == pytest.approx(16 / 17 * 4 / 5)
    assert lazy_factor([R1(interval=1), R2(interval=1)], "D") == 1.0


def _r1r2(tmp_path, data_cache, interval):
    return config.validate(tiny_recipe(tmp_path, data_cache, name=f"k{interval}", **{
        "train.kimg": 0.064, "regularizers": [{"type": "r1", "gamma": 1.0, "interval": interval},
                                              {"type": "r2", "gamma": 3.0, "interval": interval}]}))


def test_lazy_r1_r2_have_the_average_strength_of_every_step(tmp_path, data_cache):
    """Every k-th D step, one phase applies k x (R1 + R2); folded, each step applies R1 + R2: the same total over k
    iterations, on the same samples and weights."""
    k = 4
    lazy = run("<test>", [], recipe=_r1r2(tmp_path, data_cache, k)).task
    every = run("<test>", [], recipe=_r1r2(tmp_path, data_cache, 1)).task
    (phase, interval), = lazy.lazy["D"]  # one phase for both penalties
    assert (phase.name, interval) == ("D_reg:R1+R2", k) and every.lazy["D"] == []
    every.D_raw.load_state_dict(lazy.D_raw.state_dict())
    torch.manual_seed(0)
    real, fake = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    lazy.last_real, lazy.last_fake = real, fake
    lazy_loss, stats = phase.loss_fn(0)
    folded, fstats = every._folded("D", lambda reg: every._d_reg_ctx(reg, real, fake))
    assert {"r1_penalty", "r2_penalty"} <= stats.keys() and fstats.keys() == stats.keys()
    assert float(fstats["r2_penalty"]) > 0 and float(fstats["r1_penalty"]) > 0
    assert torch.allclose(lazy_loss, k * folded, rtol=1e-5)
    fired = 0
    for step in range(3 * k):
        fired += phase in lazy.plan(step, {})
    assert fired == 3  # once per k iterations


def test_a_d_penalty_with_unknown_inputs_is_a_one_line_error():
    class Odd(R1):
        inputs = ("noise",)

    with pytest.raises(ConfigError, match=r"regularizers\[1\] \(Odd\): inputs \['noise'\]"):
        check_inputs([R1(), Odd()])


def test_r2_trains_end_to_end(tmp_path, data_cache):
    recipe = tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.032, "regularizers": [
        {"type": "r2", "gamma": 1.0, "interval": 2}]})
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = (tmp_path / "runs/tiny/log.jsonl").read_text()
    assert '"r2_penalty"' in rows


@pytest.mark.parametrize("reg_cls", [R1, R2])
def test_finite_difference_estimates_the_exact_penalty_under_a_random_augmentation(reg_cls):
    """E_v[((D(x + eps v) - D(x)) / eps)^2] = ||grad D||^2. The augmentation here adds fresh noise on every call;
    the engine's replaying critic gives x + eps v the same draw as x, so the estimate matches the exact penalty
    (without the replay the noise difference over eps would swamp it)."""
    torch.manual_seed(0)
    D = QuadraticD()
    def aug_critic(x):
        return D(x + 0.5 * torch.randn_like(x))
    x = torch.randn(4096, 3, 4, 4)
    exact_reg, fd_reg = reg_cls(gamma=2.0), reg_cls(gamma=2.0, method="finite_difference", fd_eps=1e-3)
    state = torch.get_rng_state()
    exact, _ = exact_reg.penalty(d_context(exact_reg, D, aug_critic, x, x))
    torch.set_rng_state(state)  # the same augmentation draw for both estimates
    ctx = d_context(fd_reg, D, aug_critic, x, x)
    name = fd_reg.inputs[0]
    assert torch.equal(ctx.extra[f"{name}_critic"](getattr(ctx, name)), getattr(ctx, f"{name}_logits"))
    fd, stats = fd_reg.penalty(ctx)
    assert fd.item() == pytest.approx(exact.item(), rel=0.1) and f"{fd_reg.key}_penalty" in stats
    fd.backward()  # a plain backward trains D
    assert D.a.grad is not None and D.a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="method must be 'exact' or 'finite_difference'"):
        reg_cls(method="fd")


def test_finite_difference_r1_r2_train_end_to_end(tmp_path, data_cache):
    recipe = tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.032, "augment": {"type": "diffaugment"},
                                                  "regularizers": [
        {"type": "r1", "gamma": 1.0, "interval": 1, "method": "finite_difference"},
        {"type": "r2", "gamma": 1.0, "interval": 2, "method": "finite_difference"}]})
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = (tmp_path / "runs/tiny/log.jsonl").read_text()
    assert '"r1_penalty"' in rows and '"r2_penalty"' in rows
