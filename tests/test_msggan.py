"""MSG-GAN architecture: every scale out of G, every scale into D, gradient to every scale both ways, the real
pyramid, the side-by-side sample rendering, registry construction."""

import math

import pytest
import torch
import torch.nn.functional as F

from ganforge import registry
from ganforge.errors import PluginError
from ganforge_plugins.architectures.msggan import MSGGAN

torch.set_num_threads(1)
TINY = {"type": "msggan", "resolution": 16, "latent_dim": 16, "channel_base": 128, "channel_max": 16}
B = 4


def nets(**over):
    torch.manual_seed(0)
    arch = registry.build("architecture", {**TINY, **over})
    return arch, arch.build_generator(), arch.build_discriminator()


def test_registry_builds_msggan():
    arch, _, _ = nets()
    assert isinstance(arch, MSGGAN)
    assert (arch.resolution, arch.channels, arch.latent_dim) == (16, 3, 16)
    assert arch.stage_resolutions() == [16]
    with pytest.raises(PluginError, match="resolution"):
        registry.build("architecture", {**TINY, "resolution": 24})
    with pytest.raises(PluginError, match="channels"):
        registry.build("architecture", {**TINY, "channels": 4})


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_g_returns_every_scale_and_d_reads_them(resolution):
    arch, G, D = nets(resolution=resolution, channels=1)
    xs = G(arch.sample_latents(B))
    n = int(math.log2(resolution)) - 1  # 4, 8, ..., R
    assert len(xs) == n
    assert [tuple(x.shape) for x in xs] == [(B, 1, 4 * 2 ** i, 4 * 2 ** i) for i in range(n)]
    logits = D(xs)
    assert logits.shape == (B,) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="list"):
        D(xs[1:])


def test_gradient_reaches_every_to_rgb_through_d():
    arch, G, D = nets()
    D(G(arch.sample_latents(B))).mean().backward()
    assert len(G.to_rgb) == 3
    for i, rgb in enumerate(G.to_rgb):
        assert rgb.weight.grad is not None and rgb.weight.grad.abs().sum() > 0, f"scale {i}"
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_d_has_gradient_wrt_every_scale():
    arch, _, D = nets()
    torch.manual_seed(1)
    xs = [torch.randn(B, 3, s, s, requires_grad=True) for s in (4, 8, 16)]
    grads = torch.autograd.grad(D(xs).sum(), xs)
    assert all(g.shape == x.shape and g.abs().sum() > 0 for g, x in zip(grads, xs))


def test_prepare_real_builds_the_pyramid():
    arch, _, D = nets()
    torch.manual_seed(2)
    x = torch.randn(B, 3, 16, 16)
    xs = arch.prepare_real(x, 16, 1.0)
    assert [tuple(t.shape) for t in xs] == [(B, 3, 4, 4), (B, 3, 8, 8), (B, 3, 16, 16)]
    assert xs[-1] is x
    assert torch.allclose(xs[0], F.avg_pool2d(x, 4), atol=1e-6)
    assert torch.allclose(xs[1], F.avg_pool2d(x, 2), atol=1e-6)
    assert D(xs).shape == (B,)
    with pytest.raises(ValueError):
        arch.prepare_real(torch.randn(B, 3, 8, 8), 8, 1.0)


def test_render_samples_puts_scales_side_by_side():
    arch, G, _ = nets()
    with torch.no_grad():
        xs = G(arch.sample_latents(5))
    grid = arch.render_samples(xs)
    assert grid.shape == (5, 3, 16, 16 * 3)
    assert torch.equal(grid[..., 32:], xs[-1])  # finest on the right, untouched
    assert torch.equal(grid[..., :16], F.interpolate(xs[0], size=(16, 16), mode="nearest"))  # coarsest on the left


def test_default_widths():
    arch = MSGGAN()
    G, D = arch.build_generator(), arch.build_discriminator()
    assert len(G.to_rgb) == 4 and G.to_rgb[-1].weight.shape == (3, 64, 1, 1)
    assert D.blocks[1].conv0.weight.shape == (128, 128 + 64, 3, 3)  # features + fromRGB(16x16 image), lin_cat
    assert D.scale_rgb[0].weight.shape == (64, 3, 1, 1)
    assert D.final.conv.weight.shape == (128, 128 + 64 + 1, 3, 3)  # + fromRGB(4x4 image) + minibatch stddev
