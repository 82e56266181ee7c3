"""Engine v2 seams through the real CLI: pre-flight of incompatible blocks, plugin log statistics, kimg hooks,
range checks, and checkpoints that are verified and never unpickled."""

import json
import pickle

import pytest
from conftest import ckpt_tensors, run_cli, tiny_recipe, write_recipe


def _rows(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def _one_line_error(out, tmp_path, *needles):
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()
    for n in needles:
        assert n in err[0], err[0]


def test_path_length_on_dcgan_fails_in_preflight(tmp_path, data_cache):
    r = tiny_recipe(tmp_path, data_cache, regularizers=[{"type": "path_length"}])
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", r))
    _one_line_error(out, tmp_path, "regularizers[0] 'path_length'", "model 'dcgan'", "do not fit")


def test_augmentation_of_2d_points_fails_in_preflight(tmp_path):
    from conftest import ROOT

    from ganforge.config import load_raw

    r = load_raw(ROOT / "recipes/lab_grid25.yaml")
    r.update(runs_dir=str(tmp_path / "runs"), augment={"type": "ada", "p": 0.5})
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", r), "log.wandb=false")
    _one_line_error(out, tmp_path, "augment 'ada'", "data.source 'grid25'")


def test_ada_p_reaches_log_jsonl(tmp_path, data_cache):
    r = tiny_recipe(tmp_path, data_cache, augment={"type": "ada", "p": 0.2, "target": 0.6, "interval": 2,
                                                   "ramp_steps": 20})
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", r))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(tmp_path / "runs/tiny")
    assert all("ada_p" in x for x in rows) and rows[-1]["ada_p"] != 0.2  # the controller moved p
    assert "ada_signal" in rows[-1] and "d_real_sign" not in rows[-1]  # the plugin's own statistic


def test_hooks_can_fire_every_n_kimg(tmp_path, data_cache):
    r = tiny_recipe(tmp_path, data_cache, **{"sample.every": 0, "sample.every_kimg": 0.04})
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", r))
    assert out.returncode == 0, out.stderr[-3000:]
    # 8 images per step: 0.04 kimg = every 5 steps, plus nothing extra at the end (step 20 is one of them); early
    # grids at step 0 and where 0.005, 0.01, 0.02 kimg are first crossed (steps 1, 2, 3)
    names = sorted(p.name for p in (tmp_path / "runs/tiny/samples").glob("*.png"))
    assert names == [f"step-{s:08d}.png" for s in (0, 1, 2, 3, 5, 10, 15, 20)]


@pytest.mark.parametrize("override,message", [
    ("train.d_opt.lr=.nan", "train.d_opt.lr: must be a finite number"),
    ("train.kimg=.inf", "train.kimg: must be a finite number"),
    ("seed=-7", "seed: must be in [0, 2**32)"),
    ("loss={type: wgan_gp, gp_weight: .nan}", "loss.gp_weight: must be a finite number"),
])
def test_non_finite_and_out_of_range_values_fail_in_one_line(tmp_path, data_cache, override, message):
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache)), override)
    _one_line_error(out, tmp_path, message)


def _finished_run(tmp_path, data_cache, **over):
    r = tiny_recipe(tmp_path, data_cache, **over)
    path = write_recipe(tmp_path / "r.yaml", r)
    out = run_cli("run", path)
    assert out.returncode == 0, out.stderr[-3000:]
    return path, tmp_path / "runs/tiny/checkpoints"


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))  # unpickling would create the marker file


@pytest.mark.parametrize("victim", ["state.json", "state.safetensors", "rank-00000.json", "rank-00000.safetensors"])
def test_crafted_pickle_in_a_checkpoint_is_refused_and_never_executed(tmp_path, data_cache, victim):
    path, root = _finished_run(tmp_path, data_cache, **{"train.kimg": 0.08, "checkpoint.every": 5})
    only = sorted(root.glob("step-*"))
    marker = tmp_path / "pwned"
    for ckpt in only:  # every checkpoint poisoned: nothing is usable, so the run must not start fresh either
        (ckpt / victim).write_bytes(pickle.dumps(_Marker(marker)))
    out = run_cli("run", path, "train.kimg=0.16")
    assert not marker.exists()
    assert out.returncode == 2 and "no checkpoint verifies" in out.stderr.strip().splitlines()[-1], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("victim", ["state.safetensors", "state.json", "rank-00000.safetensors", "manifest.json"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, data_cache, victim):
    path, root = _finished_run(tmp_path, data_cache, **{"train.kimg": 0.08, "checkpoint.every": 5,
                                                         "checkpoint.keep": 3})
    first, latest = sorted(root.glob("step-*"))[-2:]
    data = (latest / victim).read_bytes()
    (latest / victim).write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a killed copy
    out = run_cli("run", path, "train.kimg=0.16")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"skipping checkpoint {latest.name}" in out.stdout and f"resuming from {first}" in out.stdout
    # the same as resuming from that checkpoint in a clean copy: an uninterrupted run from step 5
    ref = tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.16, "checkpoint.every": 5, "checkpoint.keep": 3,
                                               "name": "ref"})
    assert (a := run_cli("run", write_recipe(tmp_path / "ref.yaml", ref))).returncode == 0, a.stderr[-2000:]
    ta = ckpt_tensors(sorted((tmp_path / "runs/ref/checkpoints").glob("step-*"))[-1])
    tb = ckpt_tensors(sorted(root.glob("step-*"))[-1])
    assert ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)


def test_plugins_and_applications_add_hooks(tmp_path, data_cache, monkeypatch):
    """A plugin declares a hook (here a balancer counting every 5 steps); it runs at its interval next to the
    built-in log/sample/checkpoint hooks."""
    from ganforge import registry
    from ganforge import run as run_mod
    from ganforge.engine.hooks import Hook
    from ganforge_plugins.balancers.alternate import Alternate

    calls = []

    class Hooked(Alternate):
        def hooks(self):
            return [Hook("count", lambda: calls.append(len(calls)), every_steps=5)]

    monkeypatch.setenv("WANDB_MODE", "disabled")
    # registered for this test only (monkeypatch undoes it): the registry tests check every entry's origin
    registry.load_plugins()
    monkeypatch.setitem(registry._REGISTRY["balancer"], "test_hooked",
                        registry.Entry("balancer", "test_hooked", Hooked, "tests.test_engine:Hooked"))
    r = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache, balancer={"type": "test_hooked"}))
    t = run_mod.run(str(r), [])
    assert t.reason == "done" and t.step == 20 and calls == [0, 1, 2, 3]
    assert [h.name for h in t.hooks] == ["log", "sample", "checkpoint", "count"]


def test_a_second_launch_into_a_live_run_dir_is_refused(tmp_path, data_cache):
    """Workers that outlive a killed launcher (or a user starting the same command twice) must not make two
    process trees write one run directory."""
    import subprocess
    import sys
    import time

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache, **{"train.kimg": 1000}))
    first = subprocess.Popen([sys.executable, "-m", "ganforge", "run", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        log, deadline = tmp_path / "runs/tiny/log.jsonl", time.time() + 120
        while not log.exists():
            assert time.time() < deadline and first.poll() is None, "first run did not start"
            time.sleep(0.2)
        out = run_cli("run", path)
        assert out.returncode == 2 and "another ganforge process is training in this run directory" in out.stderr
        assert first.poll() is None  # the first run is untouched
    finally:
        first.kill()
        first.communicate()


def test_a_changed_learning_rate_on_resume_is_applied_and_said(tmp_path, data_cache):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache, **{"train.max_steps": 10}))
    assert (a := run_cli("run", path)).returncode == 0, a.stderr[-2000:]
    b = run_cli("run", path, "train.max_steps=20", "train.g_opt.lr=1e-4", "train.d_opt.betas=[0.0,0.99]")
    assert b.returncode == 0, b.stderr[-2000:]
    assert "train.g_opt: changed since the checkpoint (lr 0.0002 -> 0.0001)" in b.stdout
    assert "train.d_opt: changed since the checkpoint (betas [0.5, 0.999] -> [0.0, 0.99])" in b.stdout
    rows = _rows(tmp_path / "runs/tiny")
    assert rows[4]["lr_G"] == pytest.approx(2e-4) and rows[-1]["lr_G"] == pytest.approx(1e-4)
    assert rows[-1]["lr_D"] == pytest.approx(2e-4)
    c = run_cli("run", path, "train.max_steps=20", "train.g_opt.lr=1e-4", "train.d_opt.betas=[0.0,0.99]")
    assert c.returncode == 0 and "changed since the checkpoint" not in c.stdout  # now they match


def test_cpu_threads_share_of_cores():
    from ganforge.run import cpu_threads

    assert cpu_threads(None, cores=2, local_processes=1, current=1, gpu=False) == 2  # accelerate launch's 1 raised
    assert cpu_threads(None, cores=2, local_processes=2, current=1, gpu=False) is None  # torchrun x2: 1 each
    assert cpu_threads(None, cores=8, local_processes=2, current=1, gpu=False) == 4
    assert cpu_threads(3, cores=2, local_processes=1, current=1, gpu=False) == 3  # train.threads wins
    assert cpu_threads(None, cores=2, local_processes=1, current=1, gpu=True) is None


def test_run_under_accelerate_launch_uses_every_core(tmp_path, data_cache):
    """The README's command: `accelerate launch` sets OMP_NUM_THREADS=1 for one process; the run takes the cores."""
    import os
    import subprocess
    import sys

    r = tiny_recipe(tmp_path, data_cache)
    r["train"].pop("threads")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
                          "ganforge", "run", str(write_recipe(tmp_path / "r.yaml", r))],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    cores = len(os.sched_getaffinity(0))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"({cores} torch threads per process)" in out.stdout, out.stdout[-2000:]
