"""Phases as data, and the one runner that executes every phase.

A ``Phase`` says what one optimizer step trains: the (prepared) modules it trains, the modules that are frozen
while it runs, its optimizer, how many micro-batches it accumulates, and a function returning the loss and
statistics of micro-batch ``i``. Tasks build phases; the runner does the rest, identically for all of them.

Distributed hazards handled here, once:
- A trained module's gradients are all-reduced once per phase: every micro-batch but the last runs under
  ``no_sync``; gradients accumulate locally and the last (synced) backward all-reduces the sum.
- Frozen modules run under ``no_sync`` with ``requires_grad=False``: the G phase runs D on fakes, and D's DDP
  reducer must neither wait for gradients that never come ("Expected to have finished reduction ...") nor
  waste an all-reduce.
- ``manual_sync``: a phase whose loss goes through the *raw* modules (lazy penalties need double backward,
  which DDP and torch.compile cannot do) gets no all-reduce from DDP, so its gradients are averaged over ranks
  here, in one flat buffer, before the step — otherwise each rank would step with its own gradient and the
  replicas would drift apart.

Optimizers that evaluate the loss more than once per step (L-BFGS's line search) take a closure: a phase with
``closure=True`` hands ``optimizer.step`` one that re-runs this same forward/backward (all micro-batches, the same
syncing). Its first call returns the evaluation already made, so the step costs no extra pass; the gradient guard
looks at that first evaluation. The flag is data the task sets, not a test of the optimizer's type; phases
without it step exactly as before (a closure would also be refused by fp16's GradScaler). Such a phase's loss
must depend on the parameters only: one that drew a new batch per call would hand L-BFGS a moving objective.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

LossFn = Callable[[int], tuple[torch.Tensor, dict]]


@dataclass
class Phase:
    name: str
    trains: list[nn.Module]
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    frozen: list[nn.Module] = field(default_factory=list)
    micro_batches: int = 1
    manual_sync: bool = False  # loss computed through raw (unwrapped) modules: average gradients by hand
    diagnose: Callable[[], dict] | None = None  # extra statistics after backward, on log iterations only
    closure: bool = False  # optimizer.step(closure) re-evaluates the loss (L-BFGS)

    def __post_init__(self):
        # The parameters this phase toggles: those trainable when the phase is built. A module may hold weights
        # built frozen (a pretrained backbone inside a projected D); flipping requires_grad on the whole module
        # would hand them to the optimizer after the first G phase, so they are never touched.
        self.train_params = [p for m in self.trains for p in m.parameters() if p.requires_grad]
        self.frozen_params = [p for m in self.frozen for p in m.parameters() if p.requires_grad]


def _accumulate(total: dict, stats: dict, n: int) -> None:
    for k, v in stats.items():
        total[k] = total.get(k, 0.0) + torch.as_tensor(v).detach().float() / n


def _average_grads(accelerator, params: list[nn.Parameter]) -> None:
    grads = [p.grad for p in params if p.grad is not None]  # same set on every rank: same code, same phase
    if accelerator.num_processes == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = accelerator.reduce(flat, reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _grads_finite(params) -> bool:
    # After the all-reduce every rank holds the same gradients (a nan anywhere reaches every rank), so every rank
    # takes the same decision without another collective. One host sync per phase: the price of never stepping
    # Adam into a non-finite state.
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).all())


def run_phase(accelerator, phase: Phase, diagnose: bool = False) -> tuple[dict, bool]:
    """requires_grad, no_sync, autocast, micro-batch accumulation, backward, optimizer step — for any phase.
    Returns the statistics and whether the step was taken (False: non-finite gradients, update skipped)."""
    for p in phase.frozen_params:
        p.requires_grad_(False)  # no grads for frozen weights: less memory, nothing for their reducer to expect
    for p in phase.train_params:
        p.requires_grad_(True)
    try:
        out, total = _evaluate(accelerator, phase)
        if diagnose and phase.diagnose is not None:
            out.update(phase.diagnose())
        ok = _grads_finite(p for m in phase.trains for p in m.parameters())
        if ok and phase.closure:
            phase.optimizer.step(_closure(accelerator, phase, total))
        elif ok:
            phase.optimizer.step()
        phase.optimizer.zero_grad(set_to_none=True)  # None, not 0: layers outside a growth stage keep no Adam state
    finally:
        for p in phase.frozen_params:
            p.requires_grad_(True)
    return out, ok


def _evaluate(accelerator, phase: Phase) -> tuple[dict, torch.Tensor]:
    """One forward/backward of the phase over its micro-batches: gradients in ``.grad``, statistics, and the
    (detached) total loss."""
    out: dict = {}
    total = torch.zeros((), device=accelerator.device)
    n = phase.micro_batches
    with ExitStack() as frozen:
        for m in phase.frozen:
            frozen.enter_context(accelerator.no_sync(m))
        for i in range(n):
            with ExitStack() as stack:
                if i < n - 1 or phase.manual_sync:
                    for m in phase.trains:
                        stack.enter_context(accelerator.no_sync(m))
                with accelerator.autocast():
                    loss, stats = phase.loss_fn(i)
                accelerator.backward(loss / n)
            _accumulate(out, stats, n)
            total = total + loss.detach().float() / n
    if phase.manual_sync:
        _average_grads(accelerator, [p for m in phase.trains for p in m.parameters()])
    return out, total


def _closure(accelerator, phase: Phase, first: torch.Tensor):
    """``optimizer.step``'s closure: the evaluation just made on the first call, a fresh one on every later
    call (zeroed gradients, same forward/backward and syncing)."""
    pending = [first]

    def closure():
        if pending:
            return pending.pop()
        phase.optimizer.zero_grad(set_to_none=False)
        return _evaluate(accelerator, phase)[1]

    return closure
