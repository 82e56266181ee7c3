"""End-to-end runs through the real CLI, Accelerate, webdataset shards and (disabled) wandb."""

import json

import pytest
import torch
from conftest import ckpt_state, ckpt_tensors, module_state, run_cli, tiny_recipe, write_recipe

from ganforge import registry


def _final_ckpt(run_dir):
    return sorted((run_dir / "checkpoints").glob("step-*"))[-1]


def _load_all(ckpt):
    """Every tensor a checkpoint holds: both models, both optimizers, EMA, schedulers' and plugins' tensors."""
    return ckpt_tensors(ckpt)


def test_short_run_trains_and_writes_everything(tmp_path, data_cache):
    recipe = tiny_recipe(tmp_path, data_cache)
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    assert (run / "recipe.yaml").is_file()
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, 22, 2))  # 0.16 kimg / 8 real images per step
    assert {"loss_d", "loss_g", "d_real", "d_fake", "kimg", "img_per_s", "data_skipped", "d_acc_real",
            "d_acc_fake", "grad_norm_d", "grad_norm_g", "diversity"} <= rows[-1].keys()
    assert 0 <= rows[-1]["d_acc_real"] <= 1 and rows[-1]["grad_norm_g"] > 0 and rows[-1]["diversity"] > 0
    assert rows[-1]["kimg"] == pytest.approx(0.16)
    # sample.early (default): the untrained G at step 0, then every/8, every/4, every/2, then every 10 steps
    grids = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert grids == [f"step-{s:08d}.png" for s in (0, 1, 2, 5, 10, 20)]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-00000010", "step-00000020"]  # keep=2, no temp dirs left
    ckpt = run / "checkpoints" / "step-00000020"
    state = ckpt_state(ckpt)
    assert state["loop"]["step"] == 20 and state["feed"]["samples"] == 20 * 8  # one real batch per D phase
    # The checkpoint loads into freshly built nets, and training moved them away from the init.
    arch = registry.build("architecture", recipe["model"])
    torch.manual_seed(recipe["seed"])
    G0 = arch.build_generator()
    G = arch.build_generator()
    G.load_state_dict(module_state(ckpt, "G"))
    changed = [n for (n, a), b in zip(G0.named_parameters(), G.parameters()) if not torch.equal(a, b)]
    assert len(changed) == len(list(G.parameters()))
    assert json.loads((ckpt / "manifest.json").read_text())["meta"]["world_size"] == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_identical(tmp_path, data_cache, workers):
    base = tiny_recipe(tmp_path, data_cache, **{"data.workers": workers, "checkpoint.every": 100})
    full = write_recipe(tmp_path / "full.yaml", {**base, "name": "full"})
    part = write_recipe(tmp_path / "part.yaml", {**base, "name": "part"})
    a = run_cli("run", full)
    assert a.returncode == 0, a.stderr[-3000:]
    b1 = run_cli("run", part, "train.max_steps=7")
    assert b1.returncode == 0, b1.stderr[-3000:]
    assert "stopped: step 7" in b1.stdout
    b2 = run_cli("run", part)
    assert b2.returncode == 0, b2.stderr[-3000:]
    assert "resuming from" in b2.stdout and "(step 7," in b2.stdout
    steps = [json.loads(x)["step"] for x in (tmp_path / "runs/part/log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]  # continued at 7, not 0
    ta, tb = _load_all(_final_ckpt(tmp_path / "runs/full")), _load_all(_final_ckpt(tmp_path / "runs/part"))
    assert ta.keys() == tb.keys() and len(ta) > 20
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"resumed run differs from uninterrupted run in {diff[:5]}"


def test_rerun_when_done_and_fresh(tmp_path, data_cache):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.064}))
    assert run_cli("run", path).returncode == 0
    again = run_cli("run", path)
    assert again.returncode == 0 and "resuming from" in again.stdout and "done: step 8" in again.stdout
    fresh = run_cli("run", path, "--fresh")
    assert fresh.returncode == 0 and "moved the previous run to" in fresh.stdout
    assert len(list((tmp_path / "runs").glob("tiny.prev-*"))) == 1
    changed = run_cli("run", path, "model.g_width=4")
    assert changed.returncode == 2 and "different 'model' block" in changed.stderr


def test_bf16_and_grad_accum(tmp_path, data_cache):
    recipe = tiny_recipe(tmp_path, data_cache, **{"train.mixed_precision": "bf16", "train.grad_accum": 2,
                                                   "train.deterministic": False})
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs/tiny/log.jsonl").read_text().splitlines()]
    # two micro-batches of 8 per D phase: 16 real images per step, 0.16 kimg in 10 steps
    assert rows[-1]["step"] == 10 and rows[-1]["kimg"] == pytest.approx(0.16)
    assert all(abs(v) < 1e6 for r in rows for k, v in r.items() if k.startswith("loss"))


NAN_PLUGIN = """
import torch
from ganforge import register
from ganforge_plugins.losses.nonsaturating import NonSaturating

@register('loss', 'nan_after')
class NanAfter(NonSaturating):
    # Non-finite G loss from iteration `step` on; with `times`, only for the first `times` such G phases of
    # this process (a transient blow-up that a rollback with a lower lr gets past).
    def __init__(self, step: int = 12, times: int = 0):
        super().__init__()
        self.after, self.times, self.fired = step, times, 0

    def g_loss(self, ctx):
        loss, stats = super().g_loss(ctx)
        if ctx.step >= self.after and (self.times == 0 or self.fired < self.times):
            self.fired += 1
            loss = loss * float('inf')
        return loss, {'loss_g': loss.detach()}
"""


def _nan_run(tmp_path, data_cache, loss, **over):
    import os

    pkg = tmp_path / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "nan_loss.py").write_text(NAN_PLUGIN)
    info = pkg / "nan_loss-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nan-loss\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ganforge.plugins]\nnan = nan_loss\n")
    recipe = tiny_recipe(tmp_path, data_cache, loss=loss, **over)
    return run_cli("run", write_recipe(tmp_path / "r.yaml", recipe),
                   env={"PYTHONPATH": f"{pkg}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, data_cache):
    """A loss that turns non-finite: its updates are skipped (counted), three in a row stop the run with one
    line naming the last good checkpoint, and no checkpoint with a non-finite tensor is ever written."""
    out = _nan_run(tmp_path, data_cache, {"type": "nan_after", "step": 12})
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    # iterations 12, 13, 14 (0-based) are steps 13, 14, 15: the third skipped update stops the run
    assert "Traceback" not in out.stderr and err[-1].startswith("error: training diverged at step 15: 3 consecutive")
    assert "step-00000010" in err[-1]  # names the last good checkpoint
    ckpts = sorted(p.name for p in (tmp_path / "runs/tiny/checkpoints").iterdir())
    assert ckpts == ["step-00000010"]
    good = ckpt_tensors(tmp_path / "runs/tiny/checkpoints/step-00000010")
    assert all(torch.isfinite(v).all() for v in good.values())
    rows = [json.loads(x) for x in (tmp_path / "runs/tiny/log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 14 and rows[-1]["nonfinite_skipped"] == 2


def test_divergence_rolls_back_with_a_lower_learning_rate(tmp_path, data_cache):
    """Policy rollback: after 3 skipped updates the last good checkpoint is reloaded with lrs x 0.5, the log reads
    as one run, and every checkpoint written is finite."""
    out = _nan_run(tmp_path, data_cache, {"type": "nan_after", "step": 12, "times": 3},
                   **{"train.nonfinite_policy": "rollback", "train.kimg": 0.32, "checkpoint.keep": 5})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rolled back to step-00000010 (rollback 1 of 3), learning rates x0.5" in out.stdout + out.stderr
    rows = [json.loads(x) for x in (tmp_path / "runs/tiny/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, 42, 2))  # no row of the diverged steps survives
    assert rows[4]["lr_G"] == pytest.approx(2e-4) and rows[-1]["lr_G"] == pytest.approx(1e-4)
    for ckpt in (tmp_path / "runs/tiny/checkpoints").glob("step-*"):
        assert all(torch.isfinite(v).all() for v in ckpt_tensors(ckpt).values())
