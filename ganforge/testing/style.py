"""Contracts of the style-transfer kinds: ``style_loss``, ``style_extractor`` and ``style_network``."""

from __future__ import annotations

from pathlib import Path

import torch

from ._common import assert_has, build, checking, options


def check_style_loss(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """``targets`` from content and style feature maps, then a finite scalar loss with scalar stats that is zero
    when the image already is what the term asks for (its features equal both targets' sources, the image is
    flat) and larger otherwise, with a finite gradient. Returns the built term."""
    with checking("style_loss", name) as entry:
        term = build(entry, options(entry, opts))
        assert_has(term, ("layers", "targets"), "StyleLoss")
        assert all(isinstance(n, str) for n in term.layers), f"layers must be names, got {term.layers!r}"
        g = torch.Generator().manual_seed(0)
        same = {n: torch.rand(1, 4, 6, 6, generator=g) for n in term.layers}
        targets = term.targets(same, same)
        assert all(not t.requires_grad for t in targets.values()), "targets must be detached"
        flat = torch.zeros(1, 3, 8, 8)
        zero, stats = term(flat, same, targets)
        assert zero.dim() == 0 and float(zero) < 1e-6, f"loss must be 0 when the image matches, got {zero}"
        assert all(v.dim() == 0 for v in stats.values()), f"stats must be scalar tensors: {stats}"
        other = {n: torch.rand(1, 4, 6, 6, generator=g).requires_grad_(True) for n in term.layers}
        image = torch.rand(1, 3, 8, 8, generator=g).requires_grad_(True)
        loss, _ = term(image, other, targets)
        loss.backward()
        grads = [t.grad for t in (image, *other.values()) if t.grad is not None]
        assert torch.isfinite(loss) and float(loss.detach()) > float(zero), f"loss must grow off target, got {loss}"
        assert grads and all(torch.isfinite(x).all() for x in grads), "the loss must have a finite gradient"
        return term


def check_style_extractor(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """Named feature maps ``[B, C, H, W]`` for every layer asked, differentiable w.r.t. the images, deterministic,
    each image independent of its batch, grey input accepted. Returns the built extractor."""
    with checking("style_extractor", name) as entry:
        ext = build(entry, options(entry, opts))
        assert_has(ext, ("name", "checksum", "layer_names", "to"), "StyleExtractor")
        layers = tuple(ext.layer_names)
        assert layers and all(isinstance(n, str) for n in layers), f"layer_names must be names, got {layers!r}"
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1).requires_grad_(True)
        out = ext(x, layers)
        assert set(out) == set(layers), f"asked for {layers}, got {sorted(out)}"
        for n, f in out.items():
            assert f.dim() == 4 and f.shape[0] == 2, f"layer {n}: expected [2, C, H, W], got {tuple(f.shape)}"
        sum(f.float().mean() for f in out.values()).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, \
            "features must be differentiable with respect to the images"
        with torch.no_grad():
            again, alone = ext(x, layers[-1:]), ext(x[:1], layers[-1:])
            n = layers[-1]
            assert torch.equal(again[n], out[n].detach()), "features must be deterministic"
            assert torch.allclose(alone[n], out[n][:1].detach(), atol=1e-5), "each image must be independent"
            grey = ext(x[:, :1].detach(), layers[:1])
            assert grey[layers[0]].shape[0] == 2, "grey images must be accepted"
        return ext


def check_style_network(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """``build()`` gives a module that maps ``[B, 3, H, W]`` in [-1, 1] to the same shape in [-1, 1] for sizes that
    are not multiples of anything, trains (finite gradients on every parameter), treats each image alone (no
    batch statistics), is the same in train and eval mode, builds identically from the same seed and survives a
    ``state_dict`` round trip. Returns the built plugin."""
    with checking("style_network", name) as entry:
        plugin = build(entry, options(entry, opts))
        assert_has(plugin, ("build",), "StyleNetwork")
        torch.manual_seed(0)
        net = plugin.build()
        assert isinstance(net, torch.nn.Module), f"build() must return an nn.Module, got {type(net).__name__}"
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 3, 19, 26, generator=g) * 2 - 1
        y = net(x)
        assert y.shape == x.shape, f"expected the input's shape {tuple(x.shape)}, got {tuple(y.shape)}"
        assert torch.isfinite(y).all() and y.abs().max() <= 1, "outputs must be finite and in [-1, 1]"
        y.float().pow(2).mean().backward()
        params = list(net.parameters())
        assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params), \
            "every parameter must get a finite gradient"
        with torch.no_grad():
            alone = net(x[:1])
            assert torch.allclose(alone, y[:1], atol=1e-5), "each image must be independent of its batch"
            assert torch.allclose(net.eval()(x), y, atol=1e-6), "train and eval mode must agree"
            torch.manual_seed(0)
            again = plugin.build()
            assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values())), \
                "build() must be deterministic given the seed"
            torch.manual_seed(1)
            other = plugin.build()
            other.load_state_dict(net.state_dict())
            assert torch.equal(other.eval()(x), net(x)), "a state_dict round trip must reproduce the outputs"
        return plugin
