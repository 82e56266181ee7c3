"""Contract of kind "augment": differentiable, shape-preserving, random per call from torch's global RNG (so a
resumed run replays it), and a state that survives a state_dict round trip (ADA's p)."""

import torch


def check_augment(entry, tmp_path):
    opts = getattr(entry.obj, "contract_options", {})
    aug = entry.obj(**opts)
    x = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_(True)
    y = aug(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, "not differentiable"
    torch.manual_seed(1)
    a = aug(x.detach())
    torch.manual_seed(1)
    b = aug(x.detach())
    torch.manual_seed(2)
    c = aug(x.detach())
    assert torch.equal(a, b), "same global RNG state must give the same augmentation (resume replays it)"
    assert not torch.equal(a, c), "augmentation must be random per call (give contract_options a p > 0)"
    if getattr(aug, "needs_stats", False):
        for step in range(16):
            aug.update(step, {"ada_signal": 1.0, "loss_d": 0.1})
    fresh = entry.obj(**opts)
    fresh.load_state_dict(aug.state_dict())
    assert fresh.state_dict() == aug.state_dict()
    torch.manual_seed(3)
    a = aug(x.detach())
    torch.manual_seed(3)
    assert torch.equal(a, fresh(x.detach())), "a restored augment must behave exactly like the saved one"
