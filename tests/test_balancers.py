"""Balancers: the skip-D condition, the adaptive ratio's hysteresis, state round trips, resume through the real
engine, and one-line errors for bad options."""

import json
import pickle

import pytest
import torch
from conftest import ckpt_state, run_cli, write_recipe

from ganforge import registry


def build(**block):
    return registry.build("balancer", block, "balancer")


def test_skip_d_skips_exactly_when_loss_below_threshold_and_under_cap():
    b = build(type="skip_d", threshold=0.3, max_skips=2)
    seq = [  # (stats seen at this iteration, expected plan)
        ({}, ["D", "G"]),  # first iteration: no stats yet, D trains
        ({"loss_d": 0.5}, ["D", "G"]),
        ({"loss_d": 0.3}, ["D", "G"]),  # not strictly below
        ({"loss_d": 0.29}, ["G"]),
        ({"loss_d": 0.1}, ["G"]),
        ({"loss_d": 0.1}, ["D", "G"]),  # cap of 2 consecutive skips reached: D trains (and is re-measured)
        ({"loss_d": 0.1}, ["G"]),
        ({"loss_d": 0.9}, ["D", "G"]),
        ({"loss_g": 0.1}, ["D", "G"]),  # no loss_d in the stats: the last measured one (0.9) stands
    ]
    for step, (stats, plan) in enumerate(seq):
        assert b.plan(step, stats) == plan, f"iteration {step} with {stats}"
    assert b.log_stats() == {"d_skipped": 3.0, "d_skip_streak": 0.0, "d_per_g_mean": 6 / 9}
    assert build(type="skip_d").plan(0, {"loss_g": 0.0}) == ["D", "G"]  # never measured: D trains


def test_skip_d_other_stat_and_n_critic():
    b = build(type="skip_d", threshold=0.5, max_skips=1, n_critic=3, stat="wdist")
    assert b.plan(0, {"wdist": 0.4}) == ["G"] and b.plan(1, {"wdist": 0.4}) == ["D", "D", "D", "G"]
    assert b.log_stats()["d_skipped"] == 3.0


def test_skip_d_state_round_trip_mid_streak():
    a = build(type="skip_d", threshold=0.3, max_skips=3)
    for i, v in enumerate([0.5, 0.1, 0.1]):
        a.plan(i, {"loss_d": v})
    b = build(type="skip_d", threshold=0.3, max_skips=3)
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    low = {"loss_d": 0.1}
    assert [a.plan(i, low) for i in range(3, 9)] == [b.plan(i, low) for i in range(3, 9)] == \
        [["G"], ["D", "G"], ["G"], ["G"], ["G"], ["D", "G"]]  # the restored streak (2) carries over
    assert a.log_stats() == b.log_stats()


def test_adaptive_ratio_moves_with_hysteresis():
    b = build(type="adaptive", low=0.6, high=0.8, max_ratio=3, interval=1, smoothing=0.0)
    acc = lambda a: {"d_acc_real": a, "d_acc_fake": a}
    assert b.plan(0, {}) == ["D", "G"]
    assert b.plan(1, acc(0.9)) == ["D", "G", "G"]  # D too strong: one more G step
    assert b.plan(2, acc(0.95)) == ["D", "G", "G", "G"]
    assert b.plan(3, acc(0.95)) == ["D", "G", "G", "G"]  # capped at max_ratio G steps per D step
    assert b.plan(4, acc(0.7)) == ["D", "G", "G", "G"]  # inside the band: hold
    assert b.plan(5, acc(0.79)) == ["D", "G", "G", "G"]
    assert b.plan(6, acc(0.5)) == ["D", "G", "G"]  # D too weak: back one step at a time
    assert b.plan(7, acc(0.5)) == ["D", "G"]
    assert b.plan(8, acc(0.5)) == ["D", "D", "G"]
    assert b.plan(9, acc(0.65)) == ["D", "D", "G"]  # hold
    assert b.log_stats() == {"d_per_g": 2.0, "d_per_g_mean": 12 / 20, "balance_signal": 0.65}


def test_adaptive_loss_gap_smoothing_and_interval():
    b = build(type="adaptive", signal="loss_gap", low=-1.0, high=1.0, interval=3, smoothing=0.5)
    gap = {"loss_g": 3.0, "loss_d": 0.5}  # gap 2.5: D winning
    plans = [b.plan(i, gap) for i in range(6)]
    # the signal (EMA: 2.5, 2.5, ...) is above the band, but the ratio moves only on every 3rd measurement
    assert plans == [["D", "G"]] * 2 + [["D", "G", "G"]] * 3 + [["D", "G", "G", "G"]]
    c = build(type="adaptive", signal="loss_gap", low=-1.0, high=1.0, interval=3, smoothing=0.5)
    c.load_state_dict(pickle.loads(pickle.dumps(b.state_dict())))
    assert [b.plan(i, gap) for i in range(6, 12)] == [c.plan(i, gap) for i in range(6, 12)]


def test_alternate_logs_its_fixed_ratio():
    assert build(type="alternate", n_critic=5).log_stats() == {"d_per_g": 5.0}


@pytest.mark.parametrize("block, needle", [
    ({"type": "skip_d", "threshold": -0.1}, "threshold must be a finite number > 0"),
    ({"type": "skip_d", "threshold": float("inf")}, "threshold must be a finite number > 0"),
    ({"type": "skip_d", "max_skips": 0}, "max_skips must be >= 1"),
    ({"type": "adaptive", "high": 1.5}, "high must be in [0, 1] for signal 'accuracy'"),
    ({"type": "adaptive", "low": 0.9, "high": 0.8}, "need low < high"),
    ({"type": "adaptive", "smoothing": 1.0}, "smoothing must be in [0, 1)"),
])
def test_bad_values_are_one_line_errors(block, needle):
    from ganforge.errors import PluginError

    with pytest.raises(PluginError) as e:
        build(**block)
    msg = str(e.value)
    assert msg.startswith(f"balancer: balancer plugin '{block['type']}' rejected its options") and needle in msg
    assert "\n" not in msg


def lab_recipe(tmp_path, **over) -> dict:
    """A 2D-mixture run small enough for a few seconds (the lab's MLP on the ring)."""
    r = {"name": "skip", "seed": 3, "runs_dir": str(tmp_path / "runs"), "data": {"source": {"type": "ring8"},
         "workers": 0}, "model": {"type": "mlp", "latent_dim": 4, "g_width": 16, "d_width": 16, "g_depth": 2,
                                  "d_depth": 2},
         "balancer": {"type": "skip_d", "threshold": 10.0, "max_skips": 3},  # always below: the cap decides
         "train": {"batch_size": 16, "kimg": 0.08, "threads": 1, "deterministic": True, "ema_kimg": 0.05},
         "log": {"every": 2, "wandb": False, "progress": False}, "sample": {"every": 1000, "n": 16},
         "checkpoint": {"every": 1000, "keep": 1}}
    r.update(over)
    return r


def test_skip_d_through_the_engine_resumes_from_checkpoint(tmp_path):
    """A run stopped mid-streak and resumed takes exactly the decisions of an uninterrupted run."""
    base = lab_recipe(tmp_path)
    full = write_recipe(tmp_path / "full.yaml", {**base, "name": "full"})
    part = write_recipe(tmp_path / "part.yaml", {**base, "name": "part"})
    assert (a := run_cli("run", full)).returncode == 0, a.stderr[-2000:]
    assert (b := run_cli("run", part, "train.max_steps=6")).returncode == 0, b.stderr[-2000:]
    state = ckpt_state(next((tmp_path / "runs/part/checkpoints").glob("step-*")))["task"]["plugins"]
    assert {k: v for k, v in state["balancer"].items() if k != "last"} == \
        {"streak": 1, "skipped": 4, "d_steps": 2, "g_steps": 6}  # plans: DG G G G DG G
    assert (c := run_cli("run", part)).returncode == 0 and "resuming from" in c.stdout, c.stderr[-2000:]

    def final(name):
        ckpt = sorted((tmp_path / "runs" / name / "checkpoints").glob("step-*"))[-1]
        task = ckpt_state(ckpt)["task"]
        return ckpt.name, {"balancer": task["plugins"]["balancer"], "ema": task["modules"]["G_ema"]}

    (na, sa), (nb, sb) = final("full"), final("part")
    # 5 real batches of 16 = 0.08 kimg: D ran 5 times (every 4th iteration), G 17 times (12 D steps skipped)
    assert na == nb == "step-00000017" and sa["balancer"] == sb["balancer"]
    assert {k: v for k, v in sa["balancer"].items() if k != "last"} == \
        {"streak": 0, "skipped": 12, "d_steps": 5, "g_steps": 17}
    assert torch.equal(sa["ema"]["net.0.weight"], sb["ema"]["net.0.weight"])
    rows = [json.loads(x) for x in (tmp_path / "runs/full/log.jsonl").read_text().splitlines()]
    if "d_skipped" in rows[-1]:  # the engine logs balancer.log_stats() at each log step
        assert [r["d_skipped"] for r in rows][:4] == [1.0, 3.0, 4.0, 6.0]  # after iterations 2, 4, 6, 8
