"""Contract of the ``regularizer`` kind (collected by tests/test_contracts.py): each registered regularizer, built
with its ``contract_options``, gives a finite scalar penalty on a tiny model in its phase, and back-propagating
it reaches that phase's network."""

from __future__ import annotations

import torch

from ganforge import registry
from ganforge.api import PhaseContext

# A tiny StyleGAN: it has what any built-in penalty needs (a D; a G with mapping/synthesis). A third-party
# regularizer that needs another model can name one with a class attribute ``contract_model = {type: ..., ...}``.
TINY_MODEL = {"type": "stylegan", "resolution": 16, "latent_dim": 8, "channel_base": 128, "channel_max": 8,
              "mapping_layers": 1}


def check_regularizer(entry, tmp_path):
    reg = entry.obj(**getattr(entry.obj, "contract_options", {}))
    assert reg.phase in ("D", "G"), f"phase must be 'D' or 'G', got {reg.phase!r}"
    assert isinstance(reg.interval, int) and reg.interval >= 1
    torch.manual_seed(0)
    arch = registry.build("architecture", getattr(entry.obj, "contract_model", TINY_MODEL))
    G, D = arch.build_generator(), arch.build_discriminator()
    if reg.phase == "D":
        real = (torch.rand(4, arch.channels, arch.resolution, arch.resolution) * 2 - 1).requires_grad_(True)
        ctx = PhaseContext(D=D, real=real, real_logits=D(real), G=G, arch=arch, batch_size=4)
        net = D
    else:
        D.requires_grad_(False)  # as in the engine's G phase
        ctx = PhaseContext(D=D, G=G, arch=arch, batch_size=4)
        net = G
    penalty, stats = reg.penalty(ctx)
    assert penalty.dim() == 0 and torch.isfinite(penalty), f"penalty must be a finite scalar, got {penalty}"
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in stats.values())
    penalty.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads), f"the penalty does not reach the {reg.phase} network"
    again = entry.obj(**getattr(entry.obj, "contract_options", {}))
    again.load_state_dict(reg.state_dict())  # checkpoint round trip
