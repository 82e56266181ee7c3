"""Training on your own webdataset shards through the real CLI: corrupt data, exact skip counts, resume, errors."""

from __future__ import annotations

import itertools
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import ckpt_state, ckpt_tensors, run_cli, tiny_recipe, write_recipe
from test_data import GARBAGE, NO_IMAGE, TRUNCATED, truncate, write_shards

from ganforge.engine.statefile import load_tree
from ganforge.stream import _round_seed

PER_SHARD, BATCH, WORKERS, BUFFER, SEED = 12, 8, 2, 20, 1
BAD = {3: TRUNCATED, 14: GARBAGE, 15: NO_IMAGE, 30: GARBAGE}  # global sample index -> damage


@pytest.fixture(scope="module")
def corrupt_shards(tmp_path_factory):
    """4 shards of 12 16x16 PNGs: 4 corrupt samples, and shard 3 truncated inside sample 41's png (a broken
    download): it keeps 41's cls without an image and loses 42..47."""
    root = tmp_path_factory.mktemp("corrupt")
    urls, _ = write_shards(root, 4, PER_SHARD, bad=BAD)
    truncate(urls[3], 2 * 5 + 1)  # members: cls, png per sample -> member 11 is local sample 5's png
    n_raw = [PER_SHARD] * 3 + [6]
    bad = [{i % PER_SHARD for i in BAD if i // PER_SHARD == k} for k in range(4)]
    bad[3].add(5)
    damaged = [False, False, False, True]
    return str(root / "s-{000000..000003}.tar"), (n_raw, bad, damaged)


def expected_skipped(layout, n_batches: int) -> list[int]:
    """Cumulative data_skipped after each of the first n_batches loader batches, worked out independently of
    the stream's code from the documented plan: slot w's round r seeds Random(_round_seed(seed, w, r)), draws
    a shard, then distinct shards until it holds BUFFER samples, shuffles their concatenation; a damaged archive
    counts once per round before its samples; loader batch i comes from worker i % WORKERS."""
    n_raw, bad, damaged = layout
    per_role = []
    for slot in range(WORKERS):
        counts, pending, in_batch = [], 0, 0
        for r in itertools.count():
            rng = random.Random(_round_seed(SEED, slot, r))
            picks = [rng.randrange(4)]
            while sum(n_raw[k] for k in picks) < BUFFER and len(picks) < 4:
                k = rng.randrange(4)
                picks += [] if k in picks else [k]
            entries = [(k, i) for k in picks for i in range(n_raw[k])]
            order = list(range(len(entries)))
            rng.shuffle(order)
            pending += sum(damaged[k] for k in picks)
            for pos in order:
                k, i = entries[pos]
                if i in bad[k]:
                    pending += 1
                    continue
                in_batch += 1
                if in_batch == BATCH:
                    counts.append(pending)
                    pending, in_batch = 0, 0
            if len(counts) * WORKERS >= n_batches:
                break
        per_role.append(counts)
    per_batch = [per_role[i % WORKERS][i // WORKERS] for i in range(n_batches)]
    return list(itertools.accumulate(per_batch))


def recipe(tmp_path, pattern, name, **over):
    r = tiny_recipe(tmp_path, tmp_path / "cache", name=name, **{
        "data.source": {"type": "webdataset", "urls": pattern}, "data.workers": WORKERS,
        "data.shuffle_buffer": BUFFER, "train.batch_size": BATCH, "seed": SEED, "checkpoint.every": 100, **over})
    return write_recipe(tmp_path / f"{name}.yaml", r)


def log_rows(tmp_path, name):
    return [json.loads(line) for line in (tmp_path / "runs" / name / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_continues_past_corrupt_data_and_counts_it_exactly(tmp_path, corrupt_shards):
    pattern, layout = corrupt_shards
    full = run_cli("run", recipe(tmp_path, pattern, "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "done: step 20" in full.stdout  # 0.16 kimg / 8: one real batch per step
    expected = expected_skipped(layout, 20)
    assert expected[-1] >= 10  # the damage really is met, many times
    rows = log_rows(tmp_path, "full")
    assert [r["step"] for r in rows] == list(range(2, 21, 2))
    assert [r["data_skipped"] for r in rows] == [expected[r["step"] - 1] for r in rows]

    # Resume mid-stream (step 7: mid-round for both workers, worker roles swapped): the resumed stream continues
    # exactly where the checkpoint says -- same skip counts from step 8 on, same final weights.
    part = recipe(tmp_path, pattern, "part")
    first = run_cli("run", part, "train.max_steps=7")
    assert first.returncode == 0 and "stopped: step 7" in first.stdout, first.stderr[-3000:]
    second = run_cli("run", part)
    assert second.returncode == 0 and "resuming from" in second.stdout, second.stderr[-3000:]
    assert [r["data_skipped"] for r in log_rows(tmp_path, "part")] == [r["data_skipped"] for r in rows]
    ckpt = {n: sorted((tmp_path / "runs" / n / "checkpoints").glob("step-*"))[-1] for n in ("full", "part")}
    a, b = ckpt_tensors(ckpt["full"]), ckpt_tensors(ckpt["part"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = ckpt_state(ckpt["part"])
    rank0 = load_tree(ckpt["part"], "rank-00000")
    assert state["feed"]["samples"] == 20 * 8 and rank0["skipped"] == expected[-1]


@pytest.mark.slow
def test_data_errors_are_one_line_through_the_cli(tmp_path, corrupt_shards):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x07" * 3000)
    cases = {
        "missing": (str(tmp_path / "x-{000000..000003}.tar"), f"data.urls: shard not found: {tmp_path}/x-000000.tar"),
        "empty": ("", "data.source: dataset plugin 'webdataset' rejected its options: urls must be"),
        # Only found when a worker reads it, mid-run: still one line naming it, not a worker traceback.
        "unreadable": (str(garbage), f"cannot read shard {garbage}: not a tar archive"),
    }
    with ThreadPoolExecutor(len(cases)) as pool:  # independent processes: run them side by side
        outs = dict(zip(cases, pool.map(lambda n: run_cli("run", recipe(tmp_path, cases[n][0], n)), cases)))
    for name, (_, message) in cases.items():
        out = outs[name]
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and lines and lines[-1].startswith(f"error: {message}"), (name, out.stderr[-2000:])
        assert "Traceback" not in out.stderr, name
