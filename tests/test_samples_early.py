"""sample.early: a grid of the untrained G at step 0, then a growing interval (every/8, every/4, every/2, every)."""

import torch
from conftest import ckpt_tensors, run_cli, tiny_recipe, write_recipe

from ganforge.engine.hooks import Hook, early_steps


def _grids(run):
    return sorted(int(p.stem.split("-")[1]) for p in (run / "samples").glob("*.png"))


def test_early_hook_fires_on_a_growing_interval():
    assert early_steps(500) == {62, 125, 250} and early_steps(10) == {1, 2, 5} and early_steps(1) == set()
    steps = Hook("s", lambda: None, every_steps=10, early=True)
    assert [s for s in range(1, 41) if steps.due(s, 0, 0)] == [1, 2, 5, 10, 20, 30, 40]
    assert [s for s in range(1, 41) if Hook("s", lambda: None, 10).due(s, 0, 0)] == [10, 20, 30, 40]
    # by kimg (0.3 kimg per step, every 4 kimg): first crossings of 0.5, 1 and 2 kimg, then every multiple of 4
    kimg = Hook("s", lambda: None, every_kimg=4.0, early=True)
    due = [s for s in range(1, 41) if kimg.due(s, (s - 1) * 0.3, s * 0.3)]
    assert due == [2, 4, 7, 14, 27, 40]


def test_step0_grid_and_resume_neither_rewrite_grids_nor_shift_training(tmp_path, data_cache):
    base = tiny_recipe(tmp_path, data_cache)
    part = write_recipe(tmp_path / "early.yaml", {**base, "name": "early"})
    first = run_cli("run", part, "train.max_steps=7")
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs/early"
    assert _grids(run) == [0, 1, 2, 5]  # before the first step, then every/8, every/4, every/2 (every: 10)
    before = {p.name: p.stat() for p in (run / "samples").iterdir()}

    again = run_cli("run", part)  # resumes from the checkpoint max_steps wrote
    assert again.returncode == 0 and "(step 7," in again.stdout, again.stderr[-3000:]
    assert _grids(run) == [0, 1, 2, 5, 10, 20]
    for name, old in before.items():  # the step-0 (and every earlier) grid was not rewritten: same file, same time
        now = (run / "samples" / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (old.st_ino, old.st_mtime_ns), name

    # Grids draw from no training RNG stream: a run without early grids ends bit-identical.
    late = run_cli("run", write_recipe(tmp_path / "late.yaml", {**base, "name": "late", "sample": {
        "every": 10, "n": 16, "early": False}}))
    assert late.returncode == 0, late.stderr[-3000:]
    assert _grids(tmp_path / "runs/late") == [10, 20]
    a = ckpt_tensors(run / "checkpoints/step-00000020")
    b = ckpt_tensors(tmp_path / "runs/late/checkpoints/step-00000020")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
