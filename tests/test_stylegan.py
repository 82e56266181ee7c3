"""StyleGAN architecture and the StyleGAN2 regime: demodulation, style mixing, truncation, analytic R1 and path
length, mixed precision with double backward, resume across a lazy-regularization step, two ranks in step."""

import json
import math
import os

import pytest
import torch
from conftest import QuadraticD, ckpt_tensors, full_and_resumed, module_state, run_cli, write_recipe

from ganforge import registry
from ganforge.api import PhaseContext
from ganforge.tasks.gan import lazy_factor, make_optimizer
from ganforge_plugins.architectures.stylegan_layers import ModulatedConv2d
from ganforge_plugins.regularizers.path_length import PathLength
from ganforge_plugins.regularizers.r1 import R1

torch.set_num_threads(1)
TINY = {"type": "stylegan", "resolution": 16, "latent_dim": 16, "channel_base": 128, "channel_max": 16,
        "mapping_layers": 2}


def tiny_arch(**over):
    return registry.build("architecture", {**TINY, **over})


# ---- architecture ------------------------------------------------------------------------------------------------
def test_demodulated_conv_keeps_unit_variance_for_any_style():
    torch.manual_seed(0)
    conv = ModulatedConv2d(32, 32, 3, w_dim=8)
    plain = ModulatedConv2d(32, 32, 3, w_dim=8, demodulate=False)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(8, 32, 24, 24)  # unit variance
    variances = []
    with torch.no_grad():
        for scale in (0.01, 1.0, 30.0):
            for bias in (1.0, -3.0):  # styles of either sign and very different magnitudes per channel
                conv.affine.bias.normal_(bias, 2.0)
                plain.affine.bias.copy_(conv.affine.bias)
                w = torch.randn(8, 8) * scale
                y = conv(x, w)[:, :, 1:-1, 1:-1]  # interior: zero padding lowers the border's variance
                per_channel = y.var(dim=(0, 2, 3))
                assert per_channel.min() > 0.85 and per_channel.max() < 1.15, (scale, bias, per_channel)
                variances.append(plain(x, w).var().item())
    assert max(variances) / min(variances) > 10  # without demodulation the style sets the output scale


def test_resolution_and_widths_from_parameters():
    with torch.device("meta"):  # shapes only: a 1024^2 StyleGAN2 without allocating it
        arch = registry.build("architecture", {"type": "stylegan", "resolution": 1024, "channel_base": 32768})
        G, D = arch.build_generator(), arch.build_discriminator()
    assert G.synthesis.num_ws == 18 and len(G.synthesis.blocks) == 8
    assert G.synthesis.blocks[-1].conv1.conv.weight.shape == (32, 32, 3, 3)  # 32768 / 1024
    assert G.synthesis.blocks[2].conv1.conv.weight.shape == (512, 512, 3, 3)  # 32^2: capped at channel_max
    assert D.from_rgb.weight.shape == (32, 3, 1, 1) and len(D.blocks) == 8
    assert 28e6 < sum(p.numel() for p in G.parameters()) < 32e6  # StyleGAN2 config F: ~30M in G
    for bad in (8, 48, 2048):
        with pytest.raises(Exception, match="power of two from 16 to 1024"):
            tiny_arch(resolution=bad)


def test_style_mixing_switches_style_once_at_a_random_layer():
    torch.manual_seed(0)
    G = tiny_arch(mixing_prob=1.0).build_generator().train()
    z = torch.randn(6, 16)
    with torch.no_grad():
        own = G.mapping.embed(z)
        cutoffs = set()
        for _ in range(12):
            ws = G.mapping(z)
            n = ws.shape[1]
            mine = (ws - own[:, None]).abs().amax(2) < 1e-6  # [B, num_ws]: layers still driven by z's own w
            cut = int(mine[0].sum())
            assert 1 <= cut < n and mine[:, :cut].all() and not mine[:, cut:].any()  # same cutoff for the batch
            assert (ws[:, cut:] - ws[:, cut:cut + 1]).abs().max() < 1e-6  # one second style after the cutoff
            cutoffs.add(cut)
        assert len(cutoffs) > 1
        G.mapping.mixing_prob = 0.0
        assert torch.allclose(G.mapping(z), own[:, None].expand(-1, n, -1))


def test_truncation_psi_zero_is_the_average_w_image_and_one_is_plain_sampling():
    torch.manual_seed(0)
    G = tiny_arch().build_generator()
    with torch.no_grad():
        for _ in range(5):
            G(torch.randn(8, 16))  # training forwards track w_avg
        assert G.mapping.w_avg.abs().sum() > 0
        G.eval()
        z = torch.randn(6, 16)
        avg = G.synthesis(G.mapping.w_avg.expand(1, G.synthesis.num_ws, -1))
        zero = G(z, truncation_psi=0.0)
        assert torch.allclose(zero, avg.expand_as(zero), atol=1e-5)  # every z: the average-w image
        plain = G(z)
        assert torch.equal(G(z, truncation_psi=1.0), plain)  # psi = 1: untouched
        assert torch.equal(G(z), plain)  # eval mode: fixed noise, deterministic samples
        assert not torch.allclose(plain[0], plain[1])
        half = G.mapping(z, truncation_psi=0.5)
        full = G.mapping(z)
        assert torch.allclose(half, G.mapping.w_avg + 0.5 * (full - G.mapping.w_avg), atol=1e-6)


def test_channels_last_gives_the_same_networks():
    import copy

    torch.manual_seed(0)
    arch = tiny_arch()
    G, D = arch.build_generator().eval(), arch.build_discriminator()
    G_cl, D_cl = (copy.deepcopy(m).to(memory_format=torch.channels_last) for m in (G, D))
    z, x = torch.randn(4, 16), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(G(z), G_cl(z), atol=1e-5)
        assert torch.allclose(D(x), D_cl(x.contiguous(memory_format=torch.channels_last)), atol=1e-5)


# ---- regularizers ------------------------------------------------------------------------------------------------
def test_r1_equals_the_analytic_value():
    torch.manual_seed(0)
    D, gamma = QuadraticD(), 3.0
    real = torch.randn(5, 3, 4, 4).requires_grad_(True)
    penalty, stats = R1(gamma=gamma).penalty(PhaseContext(D=D, real=real, real_logits=D(real)))
    x, a = real.detach(), D.a.detach()
    expected = gamma / 2 * (a * x).square().flatten(1).sum(1).mean()
    assert torch.allclose(penalty, expected, rtol=1e-6)
    penalty.backward()  # d/da = gamma * a * mean_b x^2: the penalty trains D through the double backward
    assert torch.allclose(D.a.grad, gamma * a * x.square().mean(0), rtol=1e-5)
    assert torch.allclose(stats["r1_penalty"], expected)


class LinearG(torch.nn.Module):
    """mapping: z -> ws (num_ws copies of z); synthesis: img = sum_{n,w} ws[n, w] * A[n, w] (a linear map, J = A)."""

    def __init__(self, num_ws=3, w_dim=4, shape=(2, 5, 5)):
        super().__init__()
        self.A = torch.nn.Parameter(torch.randn(num_ws, w_dim, *shape))
        self.num_ws, self.shape = num_ws, shape
        self.register_buffer("pl_mean", torch.zeros(()))
        self.scale = torch.nn.Parameter(torch.ones(()))  # keeps ws in the graph, like a real mapping network
        self.mapping = lambda z: (z * self.scale)[:, None].expand(-1, self.num_ws, -1)

    def synthesis(self, ws):
        return torch.einsum("bnw,nwchx->bchx", ws, self.A)


def test_path_length_equals_the_analytic_value():
    torch.manual_seed(0)
    G, arch = LinearG(), type("Arch", (), {"sample_latents": lambda self, n, device=None: torch.randn(n, 4)})()
    reg = PathLength(weight=2.0, decay=0.1, batch_shrink=2)
    y = torch.randn(3, 2, 5, 5)
    reg.direction = lambda img: y  # a known image-space direction instead of a random one
    penalty1, _ = reg.penalty(PhaseContext(D=None, G=G, arch=arch, batch_size=6))
    # J^T y for sample b, layer n: sum over pixels of A[n, w, pixel] * y[b, pixel]; length = RMS over layers.
    jty = torch.einsum("nwchx,bchx->bnw", G.A.detach(), y)
    lengths = jty.square().sum(2).mean(1).sqrt()
    mean1 = 0.1 * lengths.mean()  # lerp from 0 with decay 0.1
    assert torch.allclose(G.pl_mean, mean1, rtol=1e-5)
    assert torch.allclose(penalty1, 2.0 * (lengths - mean1).square().mean(), rtol=1e-5)
    penalty1.backward()
    assert G.A.grad is not None and G.A.grad.abs().sum() > 0  # the penalty trains G
    penalty2, stats = reg.penalty(PhaseContext(D=None, G=G, arch=arch, batch_size=6))
    mean2 = mean1 + 0.1 * (lengths.mean() - mean1)  # the running mean moves towards the batch mean
    assert torch.allclose(G.pl_mean, mean2, rtol=1e-5) and torch.allclose(stats["pl_mean"], mean2, rtol=1e-5)
    assert torch.allclose(penalty2, 2.0 * (lengths - mean2).square().mean(), rtol=1e-5)


def test_path_length_keeps_its_own_mean_for_a_generator_without_the_buffer():
    G = LinearG()
    del G.pl_mean
    arch = type("Arch", (), {"sample_latents": lambda self, n, device=None: torch.randn(n, 4)})()
    reg = PathLength()
    reg.penalty(PhaseContext(D=None, G=G, arch=arch, batch_size=4))
    state = reg.state_dict()
    assert state["pl_mean"] > 0
    other = PathLength()
    other.load_state_dict(state)
    assert torch.equal(other.state_dict()["pl_mean"], state["pl_mean"])


def test_penalties_are_finite_in_bf16_with_double_backward():
    torch.manual_seed(0)
    arch = tiny_arch()
    G, D = arch.build_generator(), arch.build_discriminator()
    real = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r1, _ = R1(gamma=1.0).penalty(PhaseContext(D=D, real=real, real_logits=D(real)))
        pl, _ = PathLength().penalty(PhaseContext(D=D, G=G, arch=arch, batch_size=4))
    (r1 + pl).backward()
    for net in (G, D):
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_lazy_intervals_rescale_adam_as_in_stylegan2():
    from ganforge.config import OptimConfig

    regs = [R1(interval=16), PathLength(interval=4)]
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt_d = make_optimizer(params, OptimConfig(lr=0.0025, betas=(0.0, 0.99)), lazy_factor(regs, "D"))
    opt_g = make_optimizer(params, OptimConfig(lr=0.0025, betas=(0.0, 0.99)), lazy_factor(regs, "G"))
    assert opt_d.defaults["lr"] == pytest.approx(0.0025 * 16 / 17)
    assert opt_d.defaults["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert opt_g.defaults["lr"] == pytest.approx(0.0025 * 4 / 5)
    # every-step (folded) penalties take no extra optimizer step, so they get no correction
    assert lazy_factor([R1(interval=1), PathLength(interval=1)], "D") == 1.0


def test_lazy_penalties_take_their_own_optimizer_steps(tmp_path, data_cache):
    """The correction c = k/(k+1) is only right when the penalty runs as a phase of its own (k + 1 optimizer
    steps per k iterations, StyleGAN2). Main used to fold it into the ordinary step yet still scale lr."""
    from conftest import ckpt_state

    recipe = stylegan_recipe(tmp_path, data_cache)  # 10 iterations, R1 every 4 D steps, path length every 2 G
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = sorted((tmp_path / "runs/sg/checkpoints").glob("step-*"))[-1]
    opt = ckpt_state(ckpt)["task"]["optimizers"]
    steps = {n: [float(s["step"]) for s in opt[n]["state"].values()] for n in ("D", "G")}
    # R1 at D counts 0, 4, 8; path length at 0, 2, 4, 6, 8. (Parameters a penalty does not depend on, such as
    # D's last bias for R1, get no gradient in the penalty phase, and Adam does not count a step for them.)
    assert (max(steps["D"]), max(steps["G"]), min(steps["D"] + steps["G"])) == (13.0, 15.0, 10.0)
    rows = [json.loads(x) for x in (tmp_path / "runs/sg/log.jsonl").read_text().splitlines()]
    lr = recipe["train"]
    assert rows[-1]["lr_D"] == pytest.approx(lr["d_opt"]["lr"] * 4 / 5)
    assert rows[-1]["lr_G"] == pytest.approx(lr["g_opt"]["lr"] * 2 / 3)


# ---- end to end --------------------------------------------------------------------------------------------------
def stylegan_recipe(tmp, cache, **over):
    r = {
        "name": "sg", "seed": 3, "runs_dir": str(tmp / "runs"),
        "data": {"source": {"type": "digits", "resolution": 16, "count": 256, "shard_size": 128,
                            "cache_dir": str(cache)}, "workers": 0},
        "model": dict(TINY),
        "regularizers": [{"type": "r1", "gamma": 1.0, "interval": 4},
                         {"type": "path_length", "weight": 2.0, "interval": 2}],
        "train": {"batch_size": 8, "kimg": 0.08, "threads": 1, "deterministic": True, "ema_kimg": 0.05,
                  "ema_rampup": 0.05, "g_opt": {"lr": 0.0025, "betas": [0.0, 0.99]},
                  "d_opt": {"lr": 0.0025, "betas": [0.0, 0.99]}},
        "log": {"every": 1, "wandb": False, "progress": False},
        "sample": {"every": 5, "n": 4, "truncation_psi": 0.7},
        "checkpoint": {"every": 100, "keep": 2},
    }
    for key, value in over.items():
        cur = r
        *parents, last = key.split(".")
        for p in parents:
            cur = cur[p]
        cur[last] = value
    return r


def _checkpoint_tensors(run):
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    out = {k.replace("task.modules.", ""): v for k, v in ckpt_tensors(ckpt).items()}  # incl. pl_mean, w_avg
    return ckpt, out


def test_resume_across_a_lazy_regularization_step_is_bit_identical(tmp_path, data_cache):
    # Step 5 is the 5th iteration (D and G counts 4): R1 (every 4) and path length (every 2) both fired in it.
    out = full_and_resumed(tmp_path, stylegan_recipe(tmp_path, data_cache), 5)
    assert "(step 5," in out.stdout, out.stdout[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs/part/log.jsonl").read_text().splitlines()]
    assert {"r1_penalty", "pl_penalty", "pl_mean"} <= rows[-1].keys()
    (ca, ta), (cb, tb) = _checkpoint_tensors(tmp_path / "runs/full"), _checkpoint_tensors(tmp_path / "runs/part")
    assert ca.name == cb.name == "step-00000010"
    assert ta.keys() == tb.keys() and ta["G.pl_mean"] > 0 and ta["G.mapping.w_avg"].abs().sum() > 0
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"resumed run differs from the uninterrupted one in {diff[:5]}"
    assert (tmp_path / "runs/part/samples/step-00000010.png").is_file()  # truncated samples (psi 0.7)


@pytest.mark.slow
def test_two_processes_with_lazy_r1_and_path_length_end_identical(tmp_path, data_cache):
    import os
    import subprocess
    import sys

    recipe = stylegan_recipe(tmp_path, data_cache, **{"regularizers": [
        {"type": "r1", "gamma": 1.0, "interval": 2}, {"type": "path_length", "weight": 2.0, "interval": 2}],
        "train.kimg": 0.128, "log.every": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ganforge",
           "run", str(write_recipe(tmp_path / "r.yaml", recipe))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "runs" / "sg"
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert ckpt.name == "step-00000008"  # global batch 2 x 8: 0.128 kimg = 8 steps, R1 and PL fired 4 times each
    ranks = json.loads((ckpt / "manifest.json").read_text())["meta"]
    assert ranks["world_size"] == 2 and len(set(ranks["fingerprints"])) == 1
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(rows[-1][k]) for k in ("r1_penalty", "pl_penalty", "pl_mean"))
    assert module_state(ckpt, "G")["pl_mean"] > 0


def test_conv_clamp_bounds_every_conv_output():
    """``conv_clamp`` (the fp16 option) clips every conv output of G and D, as StyleGAN2-ADA does."""
    from ganforge_plugins.architectures.stylegan_layers import EqualConv2d, SynthesisLayer, ToRGB

    def peak(arch):
        torch.manual_seed(0)
        G, D = arch.build_generator(), arch.build_discriminator()
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.abs().max().item()))
                 for net in (G, D) for m in net.modules()
                 if isinstance(m, (SynthesisLayer, ToRGB)) or (isinstance(m, EqualConv2d) and m.clamp is not None)]
        D(G(arch.sample_latents(4)))
        for h in hooks:
            h.remove()
        return max(seen), len(seen)

    clamped, n = peak(tiny_arch(conv_clamp=0.25))
    free, _ = peak(tiny_arch())
    assert n > 10 and clamped <= 0.25 + 1e-6 and free > 0.25


@pytest.mark.slow
@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(
        not os.environ.get("GANFORGE_TEST_INDUCTOR"),
        reason="inductor's C++ codegen costs ~100 s on a 2-core CPU: GANFORGE_TEST_INDUCTOR=1 runs it")),
])
def test_compiled_forwards_train_like_eager(tmp_path, data_cache, backend):
    """``train.compile`` compiles the plain G/D forwards while R1 and path length run eagerly on the raw modules:
    a few iterations with both penalties firing give the same weights as eager. ``aot_eager`` (dynamo capture +
    AOTAutograd, eager kernels) checks that wiring in every CI run; ``inductor`` adds generated kernels."""
    import subprocess
    import sys

    over = {"regularizers": [{"type": "r1", "gamma": 1.0, "interval": 2},
                             {"type": "path_length", "weight": 2.0, "interval": 2}],
            "train.kimg": 0.032, "checkpoint.every": 4}
    runs = {}
    for name, compiled in (("eager", False), ("compiled", backend)):
        recipe = stylegan_recipe(tmp_path, data_cache, **over, **{"name": name, "train.compile": compiled})
        # Inductor draws random numbers (noise inputs, style-mixing latents) with its own generator unless told
        # to fall back to eager's: with it, the two runs see the same randomness and must agree numerically.
        # The child prints how many graphs dynamo captured, to prove something was compiled (and only when asked).
        code = ("import sys, torch, torch._inductor.config as c; c.fallback_random = True\n"
                "from ganforge.cli import main\n"
                "try:\n    main(sys.argv[1:])\n"
                "finally:\n    from torch._dynamo.utils import counters\n"
                "    print('GRAPHS', counters['stats']['unique_graphs'], file=sys.stderr)")
        out = subprocess.run([sys.executable, "-c", code, "run", str(write_recipe(tmp_path / f"{name}.yaml", recipe))],
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}")})
        assert out.returncode == 0, out.stderr[-3000:]
        graphs = int(out.stderr.rsplit("GRAPHS", 1)[1].split()[0])
        assert (graphs > 0) == bool(compiled), out.stderr[-2000:]
        if backend == "inductor":  # inductor really generated kernels: its cache holds them
            assert any((tmp_path / f"inductor-{name}").rglob("*.py")) == bool(compiled)
        runs[name] = _checkpoint_tensors(tmp_path / "runs" / name)[1]
    eager, compiled = runs["eager"], runs["compiled"]
    weights = [k for k in eager if k.startswith(("G.", "D.")) and eager[k].is_floating_point()]
    assert weights and all(torch.allclose(eager[k], compiled[k], rtol=1e-3, atol=1e-4) for k in weights), \
        max(weights, key=lambda k: (eager[k] - compiled[k]).abs().max())
