"""Every registered plugin honours its kind's contract. Parametrized over the registry, so a new plugin (built-in
or from an installed third-party package) is covered the moment it registers."""

import importlib
from pathlib import Path

import pytest
import torch

from ganforge import registry
from ganforge.api import PhaseContext, finest, leaves, tree_map

torch.set_num_threads(1)
ENTRIES = registry.entries()


def _options(entry, **defaults):
    """Small options for a contract test: a plugin may publish ``contract_options`` (kept tiny for CPU)."""
    return {**defaults, **getattr(entry.obj, "contract_options", {})}


def check_architecture(entry, tmp_path):
    arch = entry.obj(**_options(entry))
    G, D = arch.build_generator(), arch.build_discriminator()
    z = arch.sample_latents(3)
    assert z.shape == (3, arch.latent_dim)
    x = G(z)
    # images [B, C, R, R] or a pyramid of them (coarse -> fine); point architectures (the lab's MLP) declare
    # their own per-sample shape
    shape = tuple(getattr(arch, "sample_shape", (arch.channels, arch.resolution, arch.resolution)))
    assert finest(x).shape == (3, *shape)
    grid = arch.render_samples(tree_map(torch.Tensor.detach, x)) if hasattr(arch, "render_samples") else x
    assert grid.dim() == 4 and grid.shape[1] in (1, 3), "render_samples must give images [N, C, H, W]"
    assert all(torch.isfinite(t).all() for t in leaves(x))
    logits = D(x)
    assert logits.shape == (3,)
    (logits.sum()).backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no/invalid gradient for {name}"
    assert any(p.grad.abs().sum() > 0 for p in G.parameters())
    # What D sees of a real batch (prepare_real) must fit D, at every stage the architecture trains at.
    stages = arch.stage_resolutions() if hasattr(arch, "stage_resolutions") else [arch.resolution]
    assert stages == sorted(stages) and stages[-1] == arch.resolution
    for res in stages:
        for m in (G, D):
            if hasattr(m, "set_stage"):
                m.set_stage(res, 0.5 if res != stages[0] else 1.0)
        fake = G(arch.sample_latents(2))
        real = torch.rand(2, *shape[:-2], res, res) * 2 - 1 if len(shape) == 3 else finest(fake).detach()
        prep = arch.prepare_real(real, res, 0.5) if hasattr(arch, "prepare_real") else real
        assert [t.shape for t in leaves(prep)] == [t.shape for t in leaves(fake)], f"stage {res}: real != fake"
        assert D(prep).shape == (2,) and D(fake).shape == (2,)


def check_loss(entry, tmp_path):
    loss = entry.obj(**_options(entry))
    D = torch.nn.Linear(4, 1)
    good_real, bad_fake = torch.full((8,), 3.0), torch.full((8,), -3.0)
    d_good, stats = loss.d_loss(PhaseContext(D=D, fake=torch.zeros(8, 4), fake_logits=bad_fake,
                                             real=torch.zeros(8, 4), real_logits=good_real))
    d_bad, _ = loss.d_loss(PhaseContext(D=D, fake=torch.zeros(8, 4), fake_logits=good_real,
                                        real=torch.zeros(8, 4), real_logits=bad_fake))
    assert d_good.dim() == 0 and d_good < d_bad, "D's loss must fall when D separates real from fake"
    assert all(v.dim() == 0 for v in stats.values())
    # D scores the fakes as fakes (< 0): every loss must push those scores up (LSGAN only pulls toward its target)
    logits = (-2 * torch.rand(8)).requires_grad_(True)
    real = torch.randn(8) if loss.needs_real_in_g else None
    g, _ = loss.g_loss(PhaseContext(D=D, fake=torch.zeros(8, 4), fake_logits=logits, real_logits=real))
    g.backward()
    assert torch.isfinite(g) and logits.grad is not None and (logits.grad < 0).all(), \
        "G's loss must fall as D scores fakes higher"


def check_balancer(entry, tmp_path):
    a = entry.obj(**_options(entry))
    stats = {"loss_d": 0.5, "loss_g": 1.0, "d_real": 1.0, "d_fake": -1.0}
    plans = [a.plan(i, stats) for i in range(5)]
    assert all(p and set(p) <= {"D", "G"} for p in plans)
    b = entry.obj(**_options(entry))
    b.load_state_dict(a.state_dict())
    assert [a.plan(i, stats) for i in range(5, 10)] == [b.plan(i, stats) for i in range(5, 10)]


def check_dataset(entry, tmp_path):
    from ganforge.stream import ShardStream

    opts = _options(entry)
    if "urls" in registry.plugin_options(entry.obj) and "urls" not in opts:
        digits = registry.build("dataset", {"type": "digits", "count": 64, "shard_size": 32, "resolution": 16,
                                            "cache_dir": str(tmp_path)})
        digits.prepare()
        opts["urls"] = digits.urls()
    if "cache_dir" in registry.plugin_options(entry.obj):
        opts.setdefault("cache_dir", str(tmp_path))
        opts.setdefault("count", 64)
    src = entry.obj(**opts)
    src.prepare()
    direct = src.batches(batch_size=4, seed=0, rank=0, world_size=1, start_batch=0)
    if direct is not None:  # a direct-batch source (the lab's 2D mixtures): pure function, exact resume
        first = [b["image"] for b, _ in zip(direct, range(3))]
        resumed = next(iter(src.batches(batch_size=4, seed=0, rank=0, world_size=1, start_batch=2)))
        other_rank = next(iter(src.batches(batch_size=4, seed=0, rank=1, world_size=2, start_batch=0)))
        assert first[0].shape[0] == 4 and torch.equal(resumed["image"], first[2])
        assert not torch.equal(other_rank["image"], first[0])
        return
    urls = src.urls()
    assert urls
    batch = next(iter(ShardStream(urls, batch_size=4, resolution=16)))
    assert batch["image"].shape == (4, 3, 16, 16) and -1 <= batch["image"].min() <= batch["image"].max() <= 1


CHECKS = {"architecture": check_architecture, "loss": check_loss, "balancer": check_balancer,
          "dataset": check_dataset}
# Kinds whose contract lives in its own file: tests/contracts_<kind>.py defines check_<kind>(entry, tmp_path).
for _path in sorted(Path(__file__).parent.glob("contracts_*.py")):
    _kind = _path.stem.removeprefix("contracts_")
    CHECKS[_kind] = getattr(importlib.import_module(_path.stem), f"check_{_kind}")


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e.kind}:{e.name}" for e in ENTRIES])
def test_plugin_contract(entry, tmp_path):
    check = CHECKS.get(entry.kind)
    assert check is not None, f"no contract test for plugin kind {entry.kind!r}: add one to CHECKS"
    check(entry, tmp_path)


def test_registry_is_not_empty():
    assert {e.kind for e in ENTRIES} >= {"architecture", "loss", "balancer", "dataset"}
