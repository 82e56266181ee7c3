"""Architecture r3gan and its recipe: shapes, fix-up init, resampling, bf16 stages, schedules, resume, 2 ranks."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ckpt_tensors, full_and_resumed, run_cli, write_recipe

from ganforge import registry
from ganforge.api import PhaseContext
from ganforge.errors import PluginError
from ganforge_plugins.architectures.r3gan_layers import Block, Down, Up
from ganforge_plugins.regularizers.r1 import R1
from ganforge_plugins.regularizers.r2 import R2


def arch(**over):
    return registry.build("architecture", {"type": "r3gan", "resolution": 16, "width": 16, **over})


@pytest.mark.parametrize("resolution,widths", [(8, [32, 16]), (16, None), (32, [32, 32, 16, 16])])
def test_shapes_for_each_resolution(resolution, widths):
    a = arch(resolution=resolution, widths=widths, channels=1 if resolution == 8 else 3)
    G, D = a.build_generator(), a.build_discriminator()
    img = G(a.sample_latents(3))
    assert img.shape == (3, a.channels, resolution, resolution) and img.dtype == torch.float32
    assert D(img).shape == (3,)


def test_blocks_start_as_the_identity_and_resampling_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(Block(16, 2, 8, total_blocks=4)(x), x)  # last conv zero: fix-up's identity at init
    flat = torch.full((1, 4, 8, 8), 0.7)
    up, down = Up(4, 4)(flat), Down(4, 4)(flat)
    assert up.shape == (1, 4, 16, 16) and down.shape == (1, 4, 4, 4)
    assert torch.allclose(up[..., 2:-2, 2:-2], flat[..., :1, :1].expand(1, 4, 12, 12))  # interior: the same value
    assert torch.allclose(down[..., 1:-1, 1:-1], flat[..., :1, :1].expand(1, 4, 2, 2))


def test_depth_does_not_blow_up_the_activations_without_normalisation():
    """Fix-up scaling keeps the residual stream's scale of the same order at 1 and at 8 blocks per stage, even once
    the last convs are trained away from zero (set here to the same scale as the first)."""
    def out_std(blocks):
        torch.manual_seed(0)
        G = arch(blocks=blocks).build_generator()
        for m in G.modules():
            if isinstance(m, Block):
                torch.nn.init.normal_(m.project.weight, 0, m.expand.weight.std().item())
        with torch.no_grad():
            return G(torch.randn(64, 64)).std().item()

    shallow, deep = out_std(1), out_std(8)
    assert 0.2 < deep / shallow < 5


def test_bf16_stages_compute_in_bf16_and_train_with_r1_r2():
    a = arch(bf16_stages=1)
    G, D = a.build_generator(), a.build_discriminator()
    seen = {}
    for name, net in (("G", G), ("D", D)):
        for i, stage in enumerate(net.stages):
            stage.register_forward_hook(lambda m, i_, o, k=f"{name}{i}": seen.update({k: o.dtype}))  # returns None
    real = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    fake = G(a.sample_latents(4))
    assert fake.dtype == torch.float32
    fake_in = fake.detach().requires_grad_(True)
    ctx = PhaseContext(D=D, real=real, real_logits=D(real), fake=fake_in, fake_logits=D(fake_in))
    assert seen["G2"] == torch.bfloat16 and seen["G0"] == torch.float32  # G: the finest stage (16x16)
    assert seen["D0"] == torch.bfloat16 and seen["D2"] == torch.float32  # D: its first stage is the finest
    (R1(gamma=1.0).penalty(ctx)[0] + R2(gamma=1.0).penalty(ctx)[0]).backward()
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)


@pytest.mark.parametrize("over,field", [
    ({"widths": [16, 16]}, "widths needs 3 entries"),
    ({"width": 12}, r"width x expansion must be a multiple of group_channels \(16\)"),
    ({"bf16_stages": 4}, "bf16_stages must be in 0..3")])
def test_bad_options_name_the_option(over, field):
    with pytest.raises(PluginError, match=f"plugin 'r3gan' rejected its options: {field}"):
        arch(**over)


# ---- end to end: recipes/r3gan.yaml's regime in miniature ------------------------------------------------------
def r3gan_recipe(tmp, cache, **over):
    r = {
        "name": "r3", "seed": 3, "runs_dir": str(tmp / "runs"),
        "data": {"source": {"type": "digits", "resolution": 16, "count": 256, "shard_size": 128,
                            "cache_dir": str(cache)}, "workers": 0},
        "model": {"type": "r3gan", "resolution": 16, "channels": 3, "latent_dim": 16, "width": 16},
        "loss": {"type": "rpgan"},
        "regularizers": [{"type": "r1", "gamma": 1.0, "interval": 1}, {"type": "r2", "gamma": 1.0, "interval": 1}],
        "augment": {"type": "ada", "target": None, "p": 0.0},
        "train": {"batch_size": 4, "kimg": 0.04, "threads": 1, "deterministic": True, "ema_kimg": 0.01,
                  "g_opt": {"lr": 2e-3, "betas": [0.0, 0.9]}, "d_opt": {"lr": 2e-3, "betas": [0.0, 0.9]}},
        "schedule": {"lr": {"type": "cosine", "start": 1.0, "end": 0.25},
                     "values": {"regularizers[0].gamma": {"type": "cosine", "start": 1.0, "end": 0.1},
                                "regularizers[1].gamma": {"type": "cosine", "start": 1.0, "end": 0.1},
                                "g_opt.beta2": {"type": "cosine", "start": 0.9, "end": 0.99},
                                "d_opt.beta2": {"type": "cosine", "start": 0.9, "end": 0.99},
                                "ema_kimg": {"type": "cosine", "start": 0.0, "end": 0.02},
                                "augment.p": {"type": "cosine", "start": 0.0, "end": 0.5}}},
        "log": {"every": 1, "wandb": False, "progress": False},
        "sample": {"every": 5, "n": 4},
        "checkpoint": {"every": 100, "keep": 2},
    }
    r.update(over)
    return r


def test_resume_across_schedule_points_is_bit_identical(tmp_path, data_cache):
    out = full_and_resumed(tmp_path, r3gan_recipe(tmp_path, data_cache), 4)  # mid-schedule: curves between ends
    assert "changed since the checkpoint" not in out.stdout, out.stdout[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs/part/log.jsonl").read_text().splitlines()]
    assert {"r1_penalty", "r2_penalty", "ada_p"} <= rows[-1].keys()
    assert rows[0]["lr_D"] > rows[-1]["lr_D"] == pytest.approx(2e-3 * 0.25)  # cosine decay to its end, logged
    ta = ckpt_tensors(sorted((tmp_path / "runs/full/checkpoints").glob("step-*"))[-1])
    tb = ckpt_tensors(sorted((tmp_path / "runs/part/checkpoints").glob("step-*"))[-1])
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert ta.keys() == tb.keys() and not diff, f"resumed run differs in {diff[:5]}"
    last = json.loads((tmp_path / "runs/full/log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 10


def test_scheduled_beta2_reaches_adam(tmp_path, data_cache):
    from ganforge import config
    from ganforge.engine.schedule import CurveConfig, curve
    from ganforge.run import run

    task = run("<test>", [], recipe=config.validate(r3gan_recipe(tmp_path, data_cache, **{"name": "b"}))).task
    # the last of 10 steps ran at 0.036 kimg: beta2 there on the cosine 0.9 -> 0.99, beta1 untouched
    expected = curve(CurveConfig(type="cosine", start=0.9, end=0.99), 0.036, 0.04)
    assert 0.98 < expected < 0.99
    for opt in (task.opt_G, task.opt_D):
        assert opt.param_groups[0]["betas"] == (0.0, pytest.approx(expected, rel=1e-9))


def test_beta2_outside_0_1_is_refused_naming_the_path(tmp_path, data_cache):
    bad = r3gan_recipe(tmp_path, data_cache)
    bad["schedule"]["values"]["d_opt.beta2"] = {"type": "linear", "start": 0.9, "end": 1.0}
    out = run_cli("run", write_recipe(tmp_path / "bad.yaml", bad))
    assert out.returncode == 2 and "schedule.values.d_opt.beta2: Adam's beta2 must be in [0, 1)" in out.stderr


@pytest.mark.slow
def test_two_processes_end_identical(tmp_path, data_cache):
    recipe = r3gan_recipe(tmp_path, data_cache, **{"name": "two"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ganforge",
           "run", str(write_recipe(tmp_path / "r.yaml", recipe))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-4000:]
    ckpt = sorted((tmp_path / "runs/two/checkpoints").glob("step-*"))[-1]
    meta = json.loads((ckpt / "manifest.json").read_text())["meta"]
    assert ckpt.name == "step-00000005" and meta["world_size"] == 2 and len(set(meta["fingerprints"])) == 1
