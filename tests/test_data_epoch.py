"""Epoch mode (evaluation): every sample exactly once across ranks and workers, or a clear error."""

from __future__ import annotations

import collections

import pytest
import torch
from test_data import GARBAGE, NO_IMAGE, TRUNCATED, norm, truncate, write_shards

from ganforge.datatools.epoch import EpochStream
from ganforge.errors import DataError
from ganforge.stream import make_loader

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 4 workers on 2 cores is fine


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    """7 shards of 6 (uneven over 4 readers), 3 corrupt samples, 1 truncated archive (its last 2 samples lost)."""
    root = tmp_path_factory.mktemp("seven")
    urls, good = write_shards(root, 7, 6, bad={4: TRUNCATED, 13: GARBAGE, 30: NO_IMAGE})
    truncate(urls[5], 8)  # shard 5 = samples 30..35: keeps 30..33 whole, cuts 34's png, loses 35
    lost = {"s00034", "s00035"}
    return urls, {k: v for k, v in good.items() if k not in lost}


def epoch(urls, world_size, workers, **kw):
    """Every batch every rank sees in one epoch, through real DataLoaders with `workers` processes."""
    out = {}
    for rank in range(world_size):
        stream = EpochStream(urls, batch_size=4, resolution=16, rank=rank, world_size=world_size,
                             num_workers=workers, **kw)
        out[rank] = list(make_loader(stream))
    return out


def test_two_ranks_two_workers_see_every_sample_exactly_once(seven):
    urls, good = seven
    per_rank = epoch(urls, world_size=2, workers=2)
    keys = [k for batches in per_rank.values() for b in batches for k in b["key"]]
    assert collections.Counter(keys) == collections.Counter(list(good))  # the whole set, each exactly once
    # Pixels are the originals, and labels the ones written.
    for b in (b for batches in per_rank.values() for b in batches):
        assert b["image"].shape[1:] == (3, 16, 16) and len(b["key"]) == len(b["image"]) == len(b["label"])
        for key, img, label in zip(b["key"], b["image"], b["label"].tolist()):
            assert torch.equal(img, norm(good[key])) and label == int(key[1:]) % 10
    # Skips are counted exactly: 3 corrupt samples, 1 cut png and 1 damaged archive (sample 35 lost with it).
    assert sum(b["skipped"] for batches in per_rank.values() for b in batches) == 5
    # Reader slots 0..3 = (rank 0, worker 0/1), (rank 1, worker 0/1) read shards {0,4}, {1,5}, {2,6}, {3}:
    # uneven counts (shard 5 lost 3 samples), no gaps, no overlap.
    assert {r: sum(len(b["key"]) for b in bs) for r, bs in per_rank.items()} == {0: 20, 1: 17}


def test_a_second_epoch_repeats_the_first(seven):
    urls, _ = seven
    loader = make_loader(EpochStream(urls, batch_size=5, resolution=16, num_workers=2))
    first, second = [b["key"] for b in loader], [b["key"] for b in loader]
    assert first == second and sum(map(len, first)) == 37


def test_same_split_in_process_and_with_workers(seven):
    urls, _ = seven
    stream = EpochStream(urls, batch_size=4, resolution=16, num_workers=0, rank=1, world_size=3)
    keys = [k for b in stream for k in b["key"]]
    assert stream.shards_for(0) == [urls[1], urls[4]] and keys[0] == "s00006"


@pytest.mark.parametrize("world_size,workers", [(4, 2), (8, 1), (2, 4)])
def test_fewer_shards_than_readers_is_a_clear_error(seven, world_size, workers):
    urls, _ = seven
    with pytest.raises(DataError, match=rf"7 shard\(s\) .* for {world_size * workers} readers") as e:
        EpochStream(urls, batch_size=4, resolution=16, rank=0, world_size=world_size, num_workers=workers)
    assert "\n" not in str(e.value) and "s-000000.tar" in str(e.value)


def test_trailing_skips_ride_on_the_last_batch(tmp_path):
    # The last two samples are bad: their count must not be lost after the last full batch.
    urls, good = write_shards(tmp_path, 1, 6, bad={4: GARBAGE, 5: NO_IMAGE})
    batches = list(EpochStream(urls, batch_size=2, resolution=16))
    assert [len(b["key"]) for b in batches] == [2, 2] and [b["skipped"] for b in batches] == [0, 2]
