"""The training stream's shuffle buffer, labels, resolution changes and remote (http, pipe:) shards."""

from __future__ import annotations

import collections
import functools
import http.server
import os
import threading

import numpy as np
import pytest
import torch
import webdataset as wds
from test_data import GARBAGE, NO_IMAGE, TRUNCATED, encode, same, simulated_loader, take, truncate, write_shards

from ganforge.errors import DataError
from ganforge.stream import ShardStream, make_loader


def labelled_shards(root, n_shards, per_shard, bad=None, prefix="l"):
    """Shards whose samples carry cls = global index (unique, so labels identify samples) and
    shard k's images are uniform grey level k*10: a batch shows which shards it mixes."""
    bad = bad or {}
    os.makedirs(root, exist_ok=True)
    with wds.ShardWriter(os.path.join(root, f"{prefix}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(n_shards * per_shard):
            arr = np.full((8, 8, 3), (i // per_shard) * 10, dtype=np.uint8)
            data = encode(arr)
            if bad.get(i) == TRUNCATED:
                data = data[: len(data) // 2]
            elif bad.get(i) == GARBAGE:
                data = b"not an image" * 10
            sample = {"__key__": f"{prefix}{i:05d}", "cls": i}
            if bad.get(i) != NO_IMAGE:
                sample["png"] = data
            sink.write(sample)
    return [os.path.join(root, f"{prefix}-{s:06d}.tar") for s in range(n_shards)]


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory):
    """16 shards x 5 samples, a few corrupt ones spread over several shards."""
    return labelled_shards(tmp_path_factory.mktemp("sixteen"), 16, 5,
                           bad={3: GARBAGE, 11: TRUNCATED, 12: NO_IMAGE, 40: GARBAGE, 77: TRUNCATED})


# ------------------------------------------------------------------------------------------- shuffle buffer
def test_labels_come_from_cls(sixteen):
    batch = next(iter(ShardStream(sixteen, batch_size=4, resolution=8)))
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    # Sample i of shard k has grey level 10*k: label and pixels must belong to the same sample.
    for img, label in zip(batch["image"], batch["label"].tolist()):
        assert torch.equal(img, torch.full_like(img, (label // 5) * 10 / 127.5 - 1))


def test_without_buffer_a_round_is_one_shard(sixteen):
    labels = torch.cat([b["label"] for b in take(ShardStream(sixteen, batch_size=4, resolution=8), 8)])
    assert len({int(x) // 5 for x in labels[:4]}) == 1  # the first 4 usable samples of one 5-sample shard


def test_buffer_mixes_shards_within_a_batch(sixteen):
    s = ShardStream(sixteen, batch_size=16, resolution=8, shuffle_buffer=20)
    shards_per_batch = [len({int(x) // 5 for x in b["label"]}) for b in take(s, 6)]
    assert min(shards_per_batch) >= 3  # 4 shards of 5 per round, shuffled together


def test_buffer_larger_than_dataset_gives_permutations(sixteen):
    # Shards within a round are distinct: a buffer above the dataset size makes each round one shuffled pass.
    s = ShardStream(sixteen, batch_size=1, resolution=8, shuffle_buffer=10_000)
    usable = 80 - 5
    labels = [int(b["label"]) for b in take(s, 2 * usable)]
    assert sorted(labels[:usable]) == sorted(labels[usable:]) and len(set(labels[:usable])) == usable
    assert labels[:usable] != labels[usable:]


@pytest.mark.parametrize("n_shards,buffer,workers", [(16, 7, 1), (16, 12, 3), (16, 10_000, 2), (3, 7, 1), (3, 7, 2)])
def test_exact_resume_sweep_with_buffer(sixteen, tmp_path, n_shards, buffer, workers):
    # As test_data.test_exact_resume_sweep, with multi-shard rounds: prefixes ending inside a round, exactly at
    # a round's last usable sample, and (few shards: all soon summarised) rounds skipped wholesale from the
    # summaries of several shards; plus a truncated archive (a damaged shard counts once per round reading it).
    damaged = labelled_shards(tmp_path, 1, 6, prefix="d")
    truncate(damaged[0], 7)
    urls = sixteen[:n_shards] + damaged
    for batch_size in (1, 4):
        kw = dict(batch_size=batch_size, resolution=8, seed=3, num_workers=workers, shuffle_buffer=buffer)
        ref = simulated_loader(ShardStream(urls, **kw), 40)
        assert sum(b["skipped"] for b in ref) > 0
        for start in range(0, 36, 1 if batch_size == 1 else 3):
            resumed = simulated_loader(ShardStream(urls, start_batch=start, **kw), 3)
            assert same(resumed, ref[start : start + 3]), (batch_size, start)
            assert all(torch.equal(a["label"], b["label"]) for a, b in zip(resumed, ref[start:]))


def test_fast_forward_with_buffer_reads_each_shard_at_most_once(sixteen, monkeypatch):
    from ganforge import stream

    reads = []
    real = stream._read_shard
    monkeypatch.setattr(stream, "_read_shard", lambda url: reads.append(url) or real(url))
    urls = sixteen[:4]
    kw = dict(batch_size=3, resolution=8, shuffle_buffer=7)  # two 5-sample shards per round
    ref = take(ShardStream(urls, **kw), 41)
    n_full = len(reads)
    reads.clear()
    assert same(take(ShardStream(urls, start_batch=40, **kw), 1), ref[40:])
    # First visits of the 4 shards, plus the (at most two) shards of the round holding batch 40.
    assert len(reads) <= len(urls) + 2 < n_full


def test_buffer_over_empty_shards_raises_instead_of_spinning(tmp_path):
    empty = tmp_path / "empty.tar"
    with wds.TarWriter(str(empty)):
        pass
    urls, _ = write_shards(tmp_path, 1, 2, bad={0: GARBAGE, 1: NO_IMAGE})
    with pytest.raises(DataError, match="no decodable image"):
        next(iter(ShardStream([str(empty)] * 3 + urls, batch_size=1, resolution=8, shuffle_buffer=1000)))


def test_resolution_change_keeps_the_sample_sequence(sixteen):
    # Progressive growing: a stream rebuilt at a new resolution with start_batch = batches consumed continues
    # the same sample sequence (same labels in the same places) at the new size.
    kw = dict(batch_size=3, seed=5, shuffle_buffer=12, xflip=True)
    low = take(ShardStream(sixteen, resolution=8, **kw), 6)
    high = take(ShardStream(sixteen, resolution=16, start_batch=3, **kw), 3)
    assert [b["image"].shape[-1] for b in high] == [16] * 3
    assert all(torch.equal(a["label"], b["label"]) and a["skipped"] == b["skipped"] for a, b in zip(low[3:], high))


def test_loader_with_workers_carries_labels(sixteen):
    loader = make_loader(ShardStream(sixteen, batch_size=4, resolution=8, num_workers=2, shuffle_buffer=10))
    batches = take(loader, 4)
    assert all(b["label"].shape == (4,) for b in batches)
    assert collections.Counter(tuple(b["label"].tolist()) for b in batches).most_common(1)[0][1] == 1


# --------------------------------------------------------------------------------------- http(s) and pipe:
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path (webdataset fetches http(s) URLs with curl)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                  directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_http_shards_stream_like_local_ones(http_root):
    root, base = http_root
    local = labelled_shards(root, 3, 4, bad={5: GARBAGE})
    remote = [f"{base}/{os.path.basename(u)}" for u in local]
    kw = dict(batch_size=3, resolution=8, seed=2, shuffle_buffer=6)
    ref = take(ShardStream(local, **kw), 6)
    assert same(take(ShardStream(remote, **kw), 6), ref)
    assert same(take(make_loader(ShardStream(remote, num_workers=2, **kw)), 6),
                simulated_loader(ShardStream(local, num_workers=2, **kw), 6))


def test_missing_http_shard_is_a_one_line_error(http_root):
    _, base = http_root
    url = f"{base}/nope-000000.tar"
    with pytest.raises(DataError) as e:
        next(iter(ShardStream([url], batch_size=1, resolution=8)))
    assert str(e.value) == f"cannot read shard {url}: download failed: HTTP error (e.g. 404)"


def test_pipe_shards_stream_like_local_ones(tmp_path):
    local = labelled_shards(tmp_path, 2, 4, bad={1: TRUNCATED})
    piped = [f"pipe:cat {u}" for u in local]
    kw = dict(batch_size=2, resolution=8, seed=4, shuffle_buffer=8, xflip=True)
    assert same(take(ShardStream(piped, **kw), 8), take(ShardStream(local, **kw), 8))
    with pytest.raises(DataError) as e:
        next(iter(ShardStream(["pipe:cat /nonexistent/x.tar"], batch_size=1, resolution=8)))
    assert str(e.value) == "cannot read shard pipe:cat /nonexistent/x.tar: command failed with exit status 1"


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_worker_errors_come_back_as_one_line(tmp_path):
    bad = tmp_path / "garbage.tar"
    bad.write_bytes(b"\x07" * 3000)
    loader = make_loader(ShardStream([str(bad)], batch_size=1, resolution=8, num_workers=2))
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(e.value).startswith(f"cannot read shard {bad}") and "\n" not in str(e.value)
