"""How regularizers are served: which samples a D-side penalty gets, how lazy penalties share phases, and the
Adam correction that lazy phases need. Used by GANTask and by build's pre-flight, so both hand a penalty the same
context.
"""

from __future__ import annotations

import torch

from ..api import PhaseContext, batch_size, leaves, tree_map
from ..errors import ConfigError

D_INPUTS = ("real", "fake")


def check_inputs(regs) -> None:
    """A D-side penalty names the samples it is taken on (``inputs``): reals (R1), fakes (R2) or both."""
    for i, reg in enumerate(regs):
        inputs = tuple(getattr(reg, "inputs", ("real",)))
        if reg.phase == "D" and (not inputs or not set(inputs) <= set(D_INPUTS)):
            raise ConfigError(f"regularizers[{i}] ({type(reg).__name__}): inputs {list(inputs)} - a D-side "
                              f"penalty takes one or both of {list(D_INPUTS)}")


def d_context(reg, D, critic, real, fake, **fields) -> PhaseContext:
    """The samples a D-side penalty declared, detached and requiring grad, with D's logits on each.

    ``critic`` is D as the loss sees it (augmentation first), so the gradient is taken w.r.t. the un-augmented image
    as in StyleGAN2-ADA. Only what was declared is computed: R1 costs no D pass over fakes and R2 none over reals.
    """
    kw, extra = {}, {}
    for name, x in (("real", real), ("fake", fake)):
        if name in getattr(reg, "inputs", ("real",)):
            x = tree_map(lambda t: t.detach().requires_grad_(True), x)
            if getattr(reg, "replays_critic", False):  # an RNG snapshot per sample set, only when asked
                extra[f"{name}_critic"] = replaying(critic, x)
            kw[name], kw[f"{name}_logits"] = x, critic(x)
    return PhaseContext(D=D, batch_size=batch_size(real), extra=extra, **kw, **fields)


def replaying(critic, like):
    """``critic`` with the random draws (the augmentation) of the call made right after this one, on every call:
    a finite-difference penalty compares D at x and at x + eps * v and must see the same augmentation of both,
    or it would measure the augmentation's change instead of D's slope. Augmentations draw from torch's global
    generators, which are snapshotted here and restored (then put back) around each replayed call."""
    device = next(iter(leaves(like))).device
    devices = [device] if device.type == "cuda" else []
    cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state(device) if devices else None

    def again(x):
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu)
            if devices:
                torch.cuda.set_rng_state(gpu, device)
            return critic(x)

    return again


def lazy_groups(regs, phase: str) -> dict[int, list]:
    """Lazy penalties of one network by interval. Those with the same interval (R1 and R2 every 16 D steps) share
    one phase: one extra backward and optimizer step, not one each."""
    groups: dict[int, list] = {}
    for reg in regs:
        if reg.phase == phase and reg.interval > 1:
            groups.setdefault(reg.interval, []).append(reg)
    return groups


def lazy_factor(regs, phase: str) -> float:
    """StyleGAN2's correction for a network regularized in phases of its own: k + 1 optimizer steps per k
    iterations, so lr *= c and betas **= c with c = k / (k + 1) (one factor per lazy phase). Folded (interval 1)
    penalties need none."""
    c = 1.0
    for k in lazy_groups(regs, phase):
        c *= k / (k + 1)
    return c


def make_optimizer(params, cfg, c: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=cfg.lr * c, betas=tuple(b ** c for b in cfg.betas), eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
