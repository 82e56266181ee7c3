"""Every registered plugin honours its kind's contract. Parametrized over the registry, so a new plugin (built-in
or from an installed third-party package) is covered the moment it registers. The checks themselves live in
``ganforge.testing``, which plugin authors call from their own suites."""

import pytest
import torch

from ganforge import registry, testing
from ganforge.api import Loss

torch.set_num_threads(1)
ENTRIES = registry.entries()


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e.kind}:{e.name}" for e in ENTRIES])
def test_plugin_contract(entry, tmp_path):
    testing.check_plugin(entry.kind, entry.name, tmp_path=tmp_path)


def test_every_kind_has_a_check():
    missing = [k for k in registry.KINDS if k not in testing.CHECKS]
    assert not missing, f"no contract check for plugin kind(s) {missing}: add one to ganforge.testing.CHECKS"
    with pytest.raises(AssertionError, match="no contract check for plugin kind 'gizmo'"):
        testing.check_plugin("gizmo", "anything")


def test_registry_is_not_empty():
    assert {e.kind for e in ENTRIES} >= {"architecture", "loss", "balancer", "dataset"}


class _Backwards(Loss):
    """D is rewarded for calling reals fake and fakes real: a loss the contract must reject."""

    def d_loss(self, ctx):
        loss = torch.nn.functional.softplus(ctx.real_logits).mean() + torch.nn.functional.softplus(
            -ctx.fake_logits).mean()
        return loss, {"loss_d": loss.detach()}

    def g_loss(self, ctx):
        loss = torch.nn.functional.softplus(-ctx.fake_logits).mean()
        return loss, {"loss_g": loss.detach()}


@pytest.fixture
def backwards_loss(monkeypatch):
    """Registered for one test only (into a copy of the loss table that monkeypatch puts back): the registry
    tests check every entry's origin."""
    registry.load_plugins()
    monkeypatch.setitem(registry._REGISTRY, "loss", dict(registry._REGISTRY["loss"]))
    registry.register("loss", "test_backwards")(_Backwards)
    return "test_backwards"


def test_checks_can_fail(backwards_loss):
    with pytest.raises(AssertionError, match=r"loss plugin 'test_backwards' .*D's loss must fall"):
        testing.check_loss(backwards_loss)
