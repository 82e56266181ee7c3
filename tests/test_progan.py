"""ProGAN architecture: stage shapes, exact fade-in at alpha = 0, no gradient above the stage, real blending,
option validation, registry construction."""

import pytest
import torch
import torch.nn.functional as F

from ganforge import registry
from ganforge.errors import PluginError
from ganforge_plugins.architectures.progan import ProGAN

torch.set_num_threads(1)
TINY = {"type": "progan", "resolution": 16, "latent_dim": 16, "channel_base": 128, "channel_max": 16}
B = 4


def tiny(**over):
    return registry.build("architecture", {**TINY, **over})


def nets(**over):
    torch.manual_seed(0)
    arch = tiny(**over)
    return arch, arch.build_generator(), arch.build_discriminator()


def test_registry_builds_progan_with_stages():
    arch = tiny()
    assert isinstance(arch, ProGAN)
    assert (arch.resolution, arch.channels, arch.latent_dim) == (16, 3, 16)
    assert arch.stage_resolutions() == [4, 8, 16]
    assert tiny(resolution=32, start_resolution=8).stage_resolutions() == [8, 16, 32]
    assert arch.sample_latents(3).shape == (3, 16)


def test_shapes_at_every_stage_and_default_stage_is_final():
    arch, G, D = nets()
    z = arch.sample_latents(B)
    assert G(z).shape == (B, 3, 16, 16) and D(torch.randn(B, 3, 16, 16)).shape == (B,)
    for r in arch.stage_resolutions():
        for alpha in (0.0, 0.5, 1.0):
            G.set_stage(r, alpha)
            D.set_stage(r, alpha)
            x = G(z)
            assert x.shape == (B, 3, r, r) and torch.isfinite(x).all()
            logits = D(x)
            assert logits.shape == (B,) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="expects"):
        D(torch.randn(B, 3, 8, 8))  # D is at stage 16 now: a stage-8 batch is a caller's bug
    with pytest.raises(ValueError, match="not a stage"):
        G.set_stage(2, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        G.set_stage(8, 1.5)


def test_alpha_zero_is_exactly_the_previous_stage_upsampled():
    arch, G, _ = nets(resolution=32, channels=1)
    G.eval()
    z = arch.sample_latents(B)
    with torch.no_grad():
        for r in (8, 16, 32):
            G.set_stage(r // 2, 1.0)
            prev = G(z)
            G.set_stage(r, 0.0)
            cur = G(z)
            assert cur.shape == (B, 1, r, r)
            assert torch.allclose(cur, F.interpolate(prev, scale_factor=2, mode="nearest"), atol=1e-6)
            G.set_stage(r, 1.0)
            assert not torch.allclose(G(z), cur, atol=1e-3)  # alpha = 1 is the new block's own image


def _grads(module, prefixes):
    """(all grads None, any grad non-zero) over parameters whose names start with one of ``prefixes``."""
    ps = [p for n, p in module.named_parameters() if n.startswith(prefixes)]
    assert ps, prefixes
    return all(p.grad is None for p in ps), any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps)


@pytest.mark.parametrize("final", [16, 32])
def test_blocks_above_the_stage_get_no_gradient(final):
    arch, G, D = nets(resolution=final)
    G.set_stage(8, 1.0)
    D.set_stage(8, 1.0)
    D(G(arch.sample_latents(B))).mean().backward()
    above = [r for r in arch.stage_resolutions() if r > 8]
    g_idle = tuple(f"{k}.{r}." for r in above for k in ("blocks", "to_rgb")) + ("to_rgb.4.",)
    d_idle = tuple(f"{k}.{r}." for r in above for k in ("blocks", "from_rgb")) + ("from_rgb.4.",)
    assert _grads(G, g_idle)[0] and _grads(D, d_idle)[0]  # alpha = 1: the previous stage's rgb layers idle too
    assert _grads(G, ("input.", "blocks.8.", "to_rgb.8."))[1]
    assert _grads(D, ("from_rgb.8.", "blocks.8.", "final."))[1]
    active = [p for n, p in [*G.named_parameters(), *D.named_parameters()] if not n.startswith(g_idle + d_idle)]
    assert all(p.grad is not None for p in active)


def test_fade_in_trains_the_previous_rgb_layers_too():
    arch, G, D = nets()
    G.set_stage(8, 0.3)
    D.set_stage(8, 0.3)
    D(G(arch.sample_latents(B))).mean().backward()
    assert _grads(G, ("to_rgb.4.",))[1] and _grads(G, ("to_rgb.8.",))[1]
    assert _grads(D, ("from_rgb.4.",))[1] and _grads(D, ("from_rgb.8.",))[1]
    assert _grads(G, ("blocks.16.", "to_rgb.16."))[0] and _grads(D, ("blocks.16.", "from_rgb.16."))[0]


def test_d_fade_in_at_alpha_zero_ignores_the_new_block():
    _, _, D = nets()
    x = torch.randn(B, 3, 16, 16)
    D.eval()
    with torch.no_grad():
        D.set_stage(8, 1.0)
        coarse = D(F.avg_pool2d(x, 2))
        D.set_stage(16, 0.0)
        assert torch.allclose(D(x), coarse, atol=1e-6)


def test_prepare_real_blends_like_the_generator():
    arch = tiny()
    torch.manual_seed(0)
    x = torch.randn(B, 3, 16, 16)
    assert arch.prepare_real(x, 16, 1.0) is x
    coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    assert torch.allclose(arch.prepare_real(x, 16, 0.0), coarse, atol=1e-6)
    assert torch.allclose(arch.prepare_real(x, 16, 0.25), 0.75 * coarse + 0.25 * x, atol=1e-6)
    x4 = torch.randn(B, 3, 4, 4)
    assert arch.prepare_real(x4, 4, 0.0) is x4  # the first stage has nothing to fade from
    with pytest.raises(ValueError):
        arch.prepare_real(x, 8, 1.0)


@pytest.mark.parametrize("over, option", [
    ({"resolution": 24}, "resolution"),
    ({"resolution": 4}, "resolution"),
    ({"start_resolution": 32}, "start_resolution"),
    ({"start_resolution": 6}, "start_resolution"),
    ({"channels": 2}, "channels"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"mbstd_group": 0}, "mbstd_group"),
    ({"channel_base": 8}, "channel_base"),
])
def test_invalid_options_name_the_option(over, option):
    with pytest.raises(ValueError, match=option):
        ProGAN(**{k: v for k, v in {**TINY, **over}.items() if k != "type"})
    with pytest.raises(PluginError, match=option):
        tiny(**over)


def test_default_widths():
    arch = ProGAN()
    G, D = arch.build_generator(), arch.build_discriminator()
    assert G.input.ch == 128 and G.to_rgb["32"].weight.shape == (3, 64, 1, 1)
    assert D.from_rgb["32"].weight.shape == (64, 3, 1, 1) and D.final.conv.weight.shape == (128, 129, 3, 3)
