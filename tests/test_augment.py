"""Augmentations: what each transform does, ADA's p controller (rises when D overfits, falls otherwise), p in the
checkpoint through the real engine, and one-line errors."""

import pytest
import torch
from conftest import ckpt_state, run_cli, tiny_recipe, write_recipe

from ganforge import registry
from ganforge.errors import PluginError
from ganforge_plugins.augment import ada, diffaugment


def build(**block):
    return registry.build("augment", block, "augment")


def ramp(h=8, w=8, b=4):
    return torch.arange(b * 3 * h * w, dtype=torch.float32).reshape(b, 3, h, w) / (b * 3 * h * w)


# --------------------------------------------------------------------------------------------------- DiffAugment
def test_translation_shifts_by_whole_pixels_with_zero_fill():
    torch.manual_seed(0)
    x = ramp(b=16) + 1  # strictly positive: zeros can only come from the fill
    y = diffaugment.rand_translation(x, ratio=0.25)
    for xi, yi in zip(x, y):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(yi, torch.nn.functional.pad(xi, [2, 2, 2, 2])[:, 2 + dy:10 + dy, 2 + dx:10 + dx])]
        assert found, "each image must be its original shifted by an integer offset within the ratio"


def test_cutout_zeroes_one_square_of_the_given_size():
    torch.manual_seed(0)
    y = diffaugment.rand_cutout(torch.ones(32, 3, 16, 16), ratio=0.5)
    zeros = (y[:, 0] == 0)
    assert (zeros.sum((1, 2)) <= 64).all() and (zeros.sum((1, 2)) > 0).all()
    rows, cols = zeros.any(2).sum(1), zeros.any(1).sum(1)
    assert torch.equal(zeros.sum((1, 2)), rows * cols), "the zeroed region is a rectangle (square clipped at borders)"
    assert (y[:, 1:] == y[:, :1]).all(), "the same mask on every channel"


def test_color_changes_values_not_layout():
    torch.manual_seed(0)
    x = ramp(b=8)
    y = build(type="diffaugment", policy="color")(x)
    assert not torch.allclose(x, y) and y.shape == x.shape
    # brightness, saturation and contrast act per pixel: no pixel moves, so a constant image stays constant
    flat = build(type="diffaugment", policy="color")(torch.full((4, 3, 8, 8), 0.3))
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat))


def test_diffaugment_bad_policy():
    with pytest.raises(PluginError, match=r"augment: augment plugin 'diffaugment' rejected its options: policy "
                                          r"'color,zoom'.*\['zoom'\]"):
        build(type="diffaugment", policy="color,zoom")


# ---------------------------------------------------------------------------------------------------------- ADA
def test_ada_ops_at_p1_and_identity_at_p0():
    x = ramp(b=6)
    torch.manual_seed(0)
    assert torch.equal(build(type="ada", p=1.0, ops="xflip")(x), x.flip(3))
    rot = build(type="ada", p=1.0, ops="rotate90")(x)
    for xi, ri in zip(x, rot):
        assert any(torch.equal(ri, torch.rot90(xi, k, (1, 2))) for k in (1, 2, 3))
    moved = build(type="ada", p=1.0, ops="translate", translate_ratio=0.25)(x)
    for xi, mi in zip(x, moved):  # a whole-pixel shift within 0.25 x 8 = 2 px, mirrored at the borders
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if torch.equal(mi, xi[:, ada._reflect(torch.arange(8) - dy, 8)][:, :, ada._reflect(
                      torch.arange(8) - dx, 8)])]
        assert shifts
    assert torch.equal(build(type="ada", p=0.0)(x), x)  # p = 0: the identity, no RNG drawn
    assert torch.equal(ada.translate(x, 0.0), x) and torch.allclose(ada.color(x, 0.0), x)


def test_ada_translate_reflects_at_borders():
    assert ada._reflect(torch.arange(-3, 8), 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]


class ConfidentD(torch.nn.Module):
    """A D that has memorised the reals: a large positive logit for every real, augmented or not."""

    def forward(self, x):
        return torch.full((x.shape[0],), 5.0)


class ChanceD(torch.nn.Module):
    """A D that cannot tell: logits of either sign, E[sign] = 0 < target."""

    def forward(self, x):
        return torch.linspace(-1, 1, x.shape[0])


def drive(aug, D, steps, real):
    """The engine's loop as far as ADA sees it: D on augmented reals -> ada_signal -> update (every step)."""
    ps = []
    for step in range(steps):
        logits = D(aug(real))
        aug.update(step, {"ada_signal": logits.sign().mean().item()})
        ps.append(aug.p)
    return ps


def test_ada_p_rises_when_d_overfits_and_falls_otherwise():
    real = ramp(b=8, h=8, w=8)
    aug = build(type="ada", target=0.6, interval=4, ramp_steps=100)
    ps = drive(aug, ConfidentD(), 100, real)
    assert ps[3] == pytest.approx(0.04) and ps[-1] == pytest.approx(1.0)  # +4/100 every 4 steps, capped at 1
    assert all(b >= a for a, b in zip(ps, ps[1:])) and len(set(ps[:4])) == 2  # moves only every 4th step
    ps = drive(aug, ChanceD(), 60, real)
    assert ps[-1] == pytest.approx(0.4) and all(b <= a for a, b in zip(ps, ps[1:]))
    ps = drive(aug, ChanceD(), 60, real)
    assert ps[-1] == 0.0  # clamped at 0
    fixed = build(type="ada", p=0.3, target=None)
    assert not fixed.needs_stats and drive(fixed, ConfidentD(), 8, real)[-1] == 0.3


def test_ada_state_round_trip_mid_interval():
    a = build(type="ada", target=0.6, interval=4, ramp_steps=40)
    for s in range(6):
        a.update(s, {"ada_signal": 1.0})
    b = build(type="ada", target=0.6, interval=4, ramp_steps=40)
    b.load_state_dict(a.state_dict())
    for s in range(6, 10):
        a.update(s, {"ada_signal": 1.0})
        b.update(s, {"ada_signal": 1.0})
    assert a.p == b.p == pytest.approx(0.2) and a.state_dict() == b.state_dict()  # moved at updates 4 and 8


@pytest.mark.parametrize("block, needle", [
    ({"type": "ada", "target": 1.5}, "target must be in (0, 1)"),
    ({"type": "ada", "p": 2.0}, "p must be in [0, p_max=1.0]"),
    ({"type": "ada", "ops": "xflip,shear"}, "['shear']"),
])
def test_ada_bad_values(block, needle):
    with pytest.raises(PluginError) as e:
        build(**block)
    assert needle in str(e.value) and str(e.value).startswith("augment: augment plugin 'ada'")


def test_points_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"images \[B, C, H, W\].*\[4, 2\]"):
        build(type="ada", p=0.5)(torch.zeros(4, 2))


def test_ada_p_is_checkpointed_and_resume_is_exact(tmp_path, data_cache):
    """Through the real engine: ADA's p and accumulator land in the checkpoint and a resumed run matches an
    uninterrupted one bit for bit (its random draws come from the checkpointed global RNG)."""
    base = tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.096, "checkpoint.every": 100})
    base["augment"] = {"type": "ada", "p": 0.2, "target": 0.6, "interval": 2, "ramp_steps": 20}
    full = write_recipe(tmp_path / "full.yaml", {**base, "name": "full"})
    part = write_recipe(tmp_path / "part.yaml", {**base, "name": "part"})
    assert (a := run_cli("run", full)).returncode == 0, a.stderr[-2000:]
    assert (b := run_cli("run", part, "train.max_steps=5")).returncode == 0, b.stderr[-2000:]
    assert (c := run_cli("run", part)).returncode == 0 and "resuming from" in c.stdout, c.stderr[-2000:]

    def final(name):
        ckpt = sorted((tmp_path / "runs" / name / "checkpoints").glob("step-*"))[-1]
        return ckpt_state(ckpt)["task"]

    sa, sb = final("full"), final("part")
    pa, pb = sa["plugins"]["augment"], sb["plugins"]["augment"]
    assert pa == pb and pa["p"] != 0.2  # p moved (12 steps, 6 updates)
    ema_a, ema_b = sa["modules"]["G_ema"], sb["modules"]["G_ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
