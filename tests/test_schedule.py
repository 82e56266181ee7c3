"""Training schedules end to end: progressive growing stages, fade-in, per-stage batch and lr, lr curves, exact
resume across all of it, and one-line errors for schedules that cannot work."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import ckpt_tensors, run_cli, tiny_recipe, write_recipe

from ganforge.engine.schedule import CurveConfig, curve


def progan_recipe(tmp, cache, **over):
    r = tiny_recipe(tmp, cache)
    r.update(name="pg", model={"type": "progan", "resolution": 16, "channels": 3, "latent_dim": 16,
                               "channel_base": 128, "channel_max": 16, "start_resolution": 4},
             loss={"type": "wgan_gp", "drift": 0.001})
    r["train"].update(kimg=0.224, g_opt={"lr": 1e-3, "betas": [0.0, 0.99]}, d_opt={"lr": 1e-3, "betas": [0.0, 0.99]})
    r["schedule"] = {"stages": [{"resolution": 4, "kimg": 0.064, "global_batch_size": 16},
                                {"resolution": 8, "kimg": 0.064, "fade_kimg": 0.032, "global_batch_size": 16,
                                 "lr_mult": 0.5},
                                {"resolution": 16, "fade_kimg": 0.048, "global_batch_size": 8}]}
    r["log"]["every"] = 1
    r["sample"] = {"every": 100, "n": 4}
    r["checkpoint"] = {"every": 100, "keep": 2}
    for k, v in over.items():
        r[k] = v
    return r


def rows(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_progan_grows_through_three_stages_with_fade_batch_and_lr(tmp_path, data_cache):
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", progan_recipe(tmp_path, data_cache)))
    assert out.returncode == 0, out.stderr[-3000:]
    log = rows(tmp_path / "runs/pg")
    # 0.064 kimg / 16 = 4 steps at 4², 4 steps at 8², then (0.224-0.128) / 8 = 12 steps at 16²
    assert [r["resolution"] for r in log] == [4] * 4 + [8] * 4 + [16] * 12
    # resolution/alpha logged are those of the step just run; kimg is after it
    by_res = {res: [r for r in log if r["resolution"] == res] for res in (4, 8, 16)}
    assert all(r["alpha"] == 1.0 for r in by_res[4])
    a8 = [r["alpha"] for r in by_res[8]]
    assert a8 == pytest.approx([0.0, 0.5, 1.0, 1.0])  # fade over 0.032 kimg = 2 steps of 16
    a16 = [r["alpha"] for r in by_res[16]]
    assert a16[0] == 0.0 and a16[:7] == sorted(a16[:7]) and a16[6:] == [1.0] * (len(a16) - 6)
    assert 0 < a16[3] < 1
    kimg = [r["kimg"] for r in log]
    steps = [b - a for a, b in zip([0.0] + kimg, kimg)]
    assert steps[:8] == pytest.approx([0.016] * 8) and steps[8:] == pytest.approx([0.008] * 12)
    # lr multiplier 0.5 during the 8² stage; the lr logged is the one the next step uses
    lrs = [r["lr_G"] for r in log]
    assert lrs[3:7] == pytest.approx([0.5e-3] * 4) and lrs[2] == lrs[7] == pytest.approx(1e-3)
    assert "stage 1: 8x8" in out.stdout + out.stderr and "stage 2: 16x16" in out.stdout + out.stderr


def _final(run):
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    return ckpt.name, ckpt_tensors(ckpt)


def test_stop_mid_fade_and_resume_is_bit_identical(tmp_path, data_cache):
    base = progan_recipe(tmp_path, data_cache)
    full = write_recipe(tmp_path / "full.yaml", {**base, "name": "full"})
    part = write_recipe(tmp_path / "part.yaml", {**base, "name": "part"})
    assert (a := run_cli("run", full)).returncode == 0, a.stderr[-3000:]
    # step 10 lies inside the 16² fade (alpha 1/6): stage, alpha, stream position, lr and Adam state must continue
    assert (b := run_cli("run", part, "train.max_steps=10")).returncode == 0, b.stderr[-3000:]
    assert (c := run_cli("run", part)).returncode == 0 and "(step 10," in c.stdout, c.stderr[-3000:]
    (na, ta), (nb, tb) = _final(tmp_path / "runs/full"), _final(tmp_path / "runs/part")
    assert na == nb == "step-00000020" and ta.keys() == tb.keys()
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"
    assert [r["step"] for r in rows(tmp_path / "runs/part")] == list(range(1, 21))  # one row per step


@pytest.mark.slow
def test_two_processes_cross_a_stage_boundary_together(tmp_path, data_cache):
    r = progan_recipe(tmp_path, data_cache)
    r["data"]["workers"] = 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ganforge", "run", str(write_recipe(tmp_path / "r.yaml", r))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    ckpt = sorted((tmp_path / "runs/pg/checkpoints").glob("step-*"))[-1]
    meta = json.loads((ckpt / "manifest.json").read_text())["meta"]
    assert meta["world_size"] == 2 and len(set(meta["fingerprints"])) == 1
    assert {x["resolution"] for x in rows(tmp_path / "runs/pg")} == {4, 8, 16}
    assert ckpt.name == "step-00000020"  # per-process batch halves: the same steps as one process


def test_cosine_lr_follows_the_formula_and_resumes_exactly(tmp_path, data_cache):
    sched = {"lr": {"type": "cosine", "start": 1.0, "end": 0.1, "warmup_kimg": 0.016}}
    base = tiny_recipe(tmp_path, data_cache, **{"checkpoint.every": 100})
    base["schedule"] = sched
    full = write_recipe(tmp_path / "full.yaml", {**base, "name": "full"})
    part = write_recipe(tmp_path / "part.yaml", {**base, "name": "part"})
    assert (a := run_cli("run", full)).returncode == 0, a.stderr[-3000:]
    c = CurveConfig(type="cosine", start=1.0, end=0.1, warmup_kimg=0.016)
    for r in rows(tmp_path / "runs/full"):
        expect = 2e-4 * curve(c, r["kimg"], 0.16)
        assert r["lr_G"] == pytest.approx(expect, rel=1e-6) and r["lr_D"] == pytest.approx(expect, rel=1e-6)
    assert rows(tmp_path / "runs/full")[-1]["lr_G"] == pytest.approx(2e-4 * 0.1)
    assert (b := run_cli("run", part, "train.max_steps=7")).returncode == 0, b.stderr[-3000:]
    assert (d := run_cli("run", part)).returncode == 0, d.stderr[-3000:]
    (na, ta), (nb, tb) = _final(tmp_path / "runs/full"), _final(tmp_path / "runs/part")
    assert na == nb and not [k for k in ta if not torch.equal(ta[k], tb[k])]


def test_curves_match_hand_computed_values():
    assert curve(CurveConfig(type="linear", start=1, end=0), 25, 100) == pytest.approx(0.75)
    assert curve(CurveConfig(type="cosine", start=1, end=0), 50, 100) == pytest.approx(0.5)
    assert curve(CurveConfig(type="cosine", start=2, end=1), 100, 100) == pytest.approx(1.0)
    assert curve(CurveConfig(type="step", start=1, step_kimg=10, gamma=0.5), 25, 100) == pytest.approx(0.25)
    assert curve(CurveConfig(type="constant", start=3, warmup_kimg=10), 5, 100) == pytest.approx(1.5)
    assert math.isclose(curve(CurveConfig(type="linear", start=1, end=0, start_kimg=50), 10, 100), 1.0)


BAD = [
    ({"schedule.stages.0.resolution": 6}, "schedule.stages[0].resolution: must be a power of two"),
    ({"schedule.stages.1.kimg": 5.0}, "schedule.stages[1].kimg: the stage ends at"),
    ({"schedule.stages.1.global_batch_size": 15}, "schedule.stages[1].global_batch_size: 15 is not divisible"),
    ({"schedule.stages.1.fade_kimg": 0.1}, "schedule.stages[1].fade_kimg: must be in"),
    ({"model": {"type": "dcgan", "resolution": 16, "latent_dim": 16, "g_width": 8, "d_width": 8}},
     "schedule.stages: architecture 'dcgan' cannot grow"),
    ({"schedule.lr": {"type": "step"}}, "schedule.lr.step_kimg"),
    ({"schedule.values": {"regularizers[0].gamma": {"type": "linear"}}}, "schedule.values.regularizers[0].gamma"),
]


@pytest.mark.parametrize("over,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_inconsistent_schedules_fail_in_one_line_before_any_run_dir(tmp_path, data_cache, over, message):
    r = progan_recipe(tmp_path, data_cache)
    for key, value in over.items():
        cur, parts = r, key.split(".")
        for p in parts[:-1]:
            cur = cur[int(p)] if p.isdigit() else cur[p]
        cur[parts[-1]] = value
    # WORLD_SIZE as torchrun would set it for 2 processes: every check runs before any process group exists
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", r), env={"WORLD_SIZE": "2"})
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and message in err[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()
