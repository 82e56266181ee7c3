"""Contracts of the kinds that build or penalise networks: ``architecture`` and ``regularizer``."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import registry
from ..api import PhaseContext, finest, leaves, tree_map
from ..tasks.penalties import check_inputs, d_context
from ._common import assert_checkpointable, assert_has, build, checking, options

# A tiny built-in StyleGAN: it has what any built-in penalty needs (a D; a G with mapping/synthesis). A regularizer
# that needs another model names one with a class attribute ``contract_model = {"type": ..., ...}``.
TINY_MODEL = {"type": "stylegan", "resolution": 16, "latent_dim": 8, "channel_base": 128, "channel_max": 8,
              "mapping_layers": 1}


def check_architecture(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """G maps ``sample_latents(n)`` to images ``[n, C, R, R]`` (or a pyramid, or the architecture's own
    ``sample_shape``), finite, that ``render_samples`` turns into a grid; D gives logits ``[n]``; gradients reach
    every trainable parameter of G and D (``requires_grad`` when built: frozen weights stay out of the
    optimizer); at every stage of ``stage_resolutions()`` ``prepare_real`` gives D what G gives it. Returns the
    built architecture."""
    with checking("architecture", name) as entry:
        arch = build(entry, options(entry, opts))
        assert_has(arch, ("latent_dim", "resolution", "channels", "build_generator", "build_discriminator",
                          "sample_latents"), "Architecture")
        G, D = arch.build_generator(), arch.build_discriminator()
        z = arch.sample_latents(3)
        assert z.shape == (3, arch.latent_dim), f"sample_latents(3) gave {tuple(z.shape)}, expected (3, latent_dim)"
        x = G(z)
        # images [B, C, R, R] or a pyramid of them (coarse -> fine); point architectures (the lab's MLP) declare
        # their own per-sample shape
        shape = tuple(getattr(arch, "sample_shape", (arch.channels, arch.resolution, arch.resolution)))
        assert finest(x).shape == (3, *shape), f"G gave {tuple(finest(x).shape)}, expected {(3, *shape)}"
        grid = arch.render_samples(tree_map(torch.Tensor.detach, x)) if hasattr(arch, "render_samples") else x
        assert grid.dim() == 4 and grid.shape[1] in (1, 3), "render_samples must give images [N, C, H, W]"
        assert all(torch.isfinite(t).all() for t in leaves(x)), "G's output is not finite"
        logits = D(x)
        assert logits.shape == (3,), f"D must give logits [B]; got {tuple(logits.shape)}"
        (logits.sum()).backward()
        for pname, p in [*G.named_parameters(), *D.named_parameters()]:
            if p.requires_grad:  # weights built frozen (a pretrained backbone) are never trained
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"no/invalid gradient for {pname}"
        assert any(p.grad.abs().sum() > 0 for p in G.parameters()), "D's output does not depend on G's weights"
        # What D sees of a real batch (prepare_real) must fit D, at every stage the architecture trains at.
        stages = arch.stage_resolutions() if hasattr(arch, "stage_resolutions") else [arch.resolution]
        assert stages == sorted(stages) and stages[-1] == arch.resolution, \
            f"stage_resolutions() must ascend to resolution {arch.resolution}; got {stages}"
        for res in stages:
            for m in (G, D):
                if hasattr(m, "set_stage"):
                    m.set_stage(res, 0.5 if res != stages[0] else 1.0)
            fake = G(arch.sample_latents(2))
            real = torch.rand(2, *shape[:-2], res, res) * 2 - 1 if len(shape) == 3 else finest(fake).detach()
            prep = arch.prepare_real(real, res, 0.5) if hasattr(arch, "prepare_real") else real
            assert [t.shape for t in leaves(prep)] == [t.shape for t in leaves(fake)], f"stage {res}: real != fake"
            assert D(prep).shape == (2,) and D(fake).shape == (2,), f"stage {res}: D must give logits [2]"
        return arch


def check_regularizer(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """``phase`` is "D" or "G", ``interval`` an int >= 1 and a D-side penalty's ``inputs`` among "real"/"fake";
    on a tiny model (``contract_model``, default a small built-in StyleGAN) the penalty is a finite scalar with
    detached scalar stats, and its gradient reaches the network of its phase; ``state_dict`` loads into a fresh
    instance. Returns the built regularizer."""
    with checking("regularizer", name) as entry:
        opts = options(entry, opts)
        reg = build(entry, opts)
        assert_has(reg, ("phase", "interval", "penalty", "state_dict", "load_state_dict"), "Regularizer")
        assert reg.phase in ("D", "G"), f"phase must be 'D' or 'G', got {reg.phase!r}"
        assert isinstance(reg.interval, int) and reg.interval >= 1, f"interval must be an int >= 1: {reg.interval!r}"
        torch.manual_seed(0)
        arch = registry.build("architecture", getattr(entry.obj, "contract_model", TINY_MODEL))
        G, D = arch.build_generator(), arch.build_discriminator()
        if reg.phase == "D":  # the samples it declared in ``inputs``, served as the engine serves them
            check_inputs([reg])
            real, fake = (torch.rand(2, 4, arch.channels, arch.resolution, arch.resolution) * 2 - 1).unbind(0)
            ctx = d_context(reg, D, D, real, fake, G=G, arch=arch)
            net = D
        else:
            D.requires_grad_(False)  # as in the engine's G phase
            ctx = PhaseContext(D=D, G=G, arch=arch, batch_size=4)
            net = G
        penalty, stats = reg.penalty(ctx)
        assert penalty.dim() == 0 and torch.isfinite(penalty), f"penalty must be a finite scalar, got {penalty}"
        assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in stats.values()), \
            f"stats must be finite, detached scalar tensors: {stats}"
        penalty.backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), f"no/invalid gradient on the {reg.phase} net"
        assert any(g.abs().sum() > 0 for g in grads), f"the penalty does not reach the {reg.phase} network"
        assert_checkpointable(reg.state_dict())
        again = build(entry, opts)
        again.load_state_dict(reg.state_dict())  # checkpoint round trip
        return reg
