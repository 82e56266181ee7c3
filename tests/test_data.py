"""The training stream (ganforge.stream) and the built-in dataset sources, on real shards in tmp_path."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import tarfile
import types
from unittest import mock

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from ganforge import registry, stream
from ganforge.errors import DataError, PluginError
from ganforge.stream import ShardStream, expand_urls, make_loader
from ganforge_plugins.datasets.digits import Digits
from ganforge_plugins.datasets.webdataset_source import WebDataset

TRUNCATED, GARBAGE, NO_IMAGE = "truncated", "garbage", "no-image"


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_shards(root, n_shards, per_shard, size=(16, 16), bad=None, fmt="png", prefix="s"):
    """Shards of random-noise images (unique, so an output identifies its source). ``bad`` maps a global
    sample index to TRUNCATED/GARBAGE/NO_IMAGE. Returns (urls, {key: uint8 HWC array} of the good samples)."""
    bad = bad or {}
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    good = {}
    with wds.ShardWriter(os.path.join(root, f"{prefix}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(n_shards * per_shard):
            key = f"{prefix}{i:05d}"
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            data = encode(arr, "JPEG" if fmt == "jpg" else "PNG")
            kind = bad.get(i)
            if kind == TRUNCATED:
                data = data[: len(data) // 2]
            elif kind == GARBAGE:
                data = b"this is not an image" * 10
            sample = {"__key__": key, "cls": i % 10}
            if kind != NO_IMAGE:
                sample[fmt] = data
            sink.write(sample)
            if kind is None:
                good[key] = arr
    return [os.path.join(root, f"{prefix}-{s:06d}.tar") for s in range(n_shards)], good


def truncate(path: str, member: int) -> None:
    """Cut the archive inside the data of its ``member``-th file (a cut at or inside a header block looks
    like a clean end of archive to tarfile, so it could not be detected)."""
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[member].offset_data + 10
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:cut])


def norm(arr: np.ndarray) -> torch.Tensor:
    """Expected stream output for a uint8 HWC array (same float32 op order as the stream)."""
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).to(torch.float32).div_(127.5).sub_(1.0)


def take(iterable, n):
    return list(itertools.islice(iter(iterable), n))


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["image"], y["image"]) and x["skipped"] == y["skipped"] for x, y in zip(a, b)
    )


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Three small shards with some corrupt samples: batches straddle rounds and skip counts are non-zero."""
    root = tmp_path_factory.mktemp("mixed")
    return write_shards(root, 3, 7, bad={2: TRUNCATED, 9: GARBAGE, 10: NO_IMAGE, 20: GARBAGE})


# ------------------------------------------------------------------------------------------------ decoding
def test_png_round_trip_is_exact(tmp_path):
    urls, good = write_shards(tmp_path, 1, 6)
    batch = next(iter(ShardStream(urls, batch_size=6, resolution=16)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (6, 3, 16, 16)
    assert batch["skipped"] == 0
    expected = [norm(a) for a in good.values()]
    # One round over a single shard is a permutation of its samples.
    for img in batch["image"]:
        assert sum(torch.equal(img, e) for e in expected) == 1
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1


def test_grayscale_and_resize(tmp_path):
    urls, _ = write_shards(tmp_path, 1, 4, size=(40, 24))
    rgb = next(iter(ShardStream(urls, batch_size=4, resolution=8)))["image"]
    assert rgb.shape == (4, 3, 8, 8) and rgb.min() >= -1 and rgb.max() <= 1
    gray = next(iter(ShardStream(urls, batch_size=4, resolution=32, channels=1)))["image"]
    assert gray.shape == (4, 1, 32, 32)


def test_jpeg_input(tmp_path):
    urls, _ = write_shards(tmp_path, 1, 3, size=(64, 48), fmt="jpg")
    batch = next(iter(ShardStream(urls, batch_size=3, resolution=16)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["skipped"] == 0


def test_xflip_mirrors_some_images(tmp_path):
    urls, good = write_shards(tmp_path, 1, 16)
    batch = next(iter(ShardStream(urls, batch_size=16, resolution=16, xflip=True)))
    plain = [norm(a) for a in good.values()]
    flipped = [norm(a[:, ::-1]) for a in good.values()]
    n_plain = sum(any(torch.equal(img, e) for e in plain) for img in batch["image"])
    n_flip = sum(any(torch.equal(img, e) for e in flipped) for img in batch["image"])
    assert n_plain + n_flip == 16 and 0 < n_flip < 16


# ------------------------------------------------------------------------------------------- determinism
def test_same_arguments_same_batches(mixed):
    urls, _ = mixed
    kw = dict(batch_size=4, resolution=16, seed=3, world_size=2)
    a = take(ShardStream(urls, rank=0, **kw), 6)
    assert same(a, take(ShardStream(urls, rank=0, **kw), 6))
    assert not torch.equal(a[0]["image"], take(ShardStream(urls, rank=1, **kw), 1)[0]["image"])
    assert not torch.equal(a[0]["image"], take(ShardStream(urls, **{**kw, "seed": 4}), 1)[0]["image"])


@pytest.mark.parametrize("start", [1, 2, 5, 9, 14])
def test_exact_resume_in_process(mixed, start):
    urls, _ = mixed
    kw = dict(batch_size=3, resolution=16, seed=1, xflip=True)
    ref = take(ShardStream(urls, **kw), start + 4)
    assert sum(b["skipped"] for b in ref) > 0  # the corrupt samples really are exercised
    assert same(take(ShardStream(urls, start_batch=start, **kw), 4), ref[start:])


def simulated_loader(s: ShardStream, n: int) -> list[dict]:
    """What make_loader yields (worker i % W serves batch i), in-process: fast enough to sweep many cases."""
    its = []
    for w in range(s.roles):
        info = types.SimpleNamespace(id=w, num_workers=s.roles)
        with mock.patch("torch.utils.data.get_worker_info", return_value=info):
            it = iter(s)
            first = next(it)  # the generator reads its worker info on the first next()
        its.append(itertools.chain([first], it))
    return [next(its[i % s.roles]) for i in range(n)]


@pytest.mark.parametrize("workers", [1, 3])
def test_exact_resume_sweep(mixed, tmp_path, workers):
    # Every resume point, batch sizes that do and do not divide a shard, plus a shard with no usable sample
    # and a truncated archive: covers prefixes ending mid-round, exactly at a round's last usable sample
    # (trailing bad ones), and rounds skipped from a shard summary.
    urls, _ = mixed
    hopeless, _ = write_shards(tmp_path, 1, 3, bad={0: GARBAGE, 1: NO_IMAGE, 2: TRUNCATED}, prefix="z")
    damaged, _ = write_shards(tmp_path, 1, 6, prefix="d")
    truncate(damaged[0], 7)  # keeps samples 0-2 whole, sample 3 without its png
    urls = urls + hopeless + damaged
    for batch_size in (1, 2, 5):
        kw = dict(batch_size=batch_size, resolution=16, seed=7, num_workers=workers)
        ref = simulated_loader(ShardStream(urls, **kw), 34)
        for start in range(30):
            resumed = simulated_loader(ShardStream(urls, start_batch=start, **kw), 4)
            assert same(resumed, ref[start : start + 4]), (batch_size, start)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a 2-core machine is fine here
@pytest.mark.parametrize("workers,start", [(2, 3), (2, 6), (3, 4)])
def test_exact_resume_with_workers(mixed, workers, start):
    urls, _ = mixed
    kw = dict(batch_size=3, resolution=16, seed=2, num_workers=workers, rank=1, world_size=2)
    ref = take(make_loader(ShardStream(urls, **kw)), start + 4)
    assert same(take(make_loader(ShardStream(urls, start_batch=start, **kw)), 4), ref[start:])
    # Workers must not all produce the same data.
    assert not torch.equal(ref[0]["image"], ref[1]["image"])


def test_fast_forward_skips_summarised_shards_without_reading(mixed, monkeypatch):
    urls, _ = mixed
    reads = []
    real = stream._read_shard
    monkeypatch.setattr(stream, "_read_shard", lambda url: reads.append(url) or real(url))
    kw = dict(batch_size=3, resolution=16)
    ref = take(ShardStream(urls, **kw), 41)
    n_full = len(reads)
    reads.clear()
    assert same(take(ShardStream(urls, start_batch=40, **kw), 1), ref[40:])
    # Only the first visit of each of the 3 shards and the round holding batch 40 need I/O.
    assert len(reads) <= len(urls) + 1 < n_full


def test_fewer_shards_than_slots_still_yields(tmp_path):
    urls, _ = write_shards(tmp_path, 1, 5)
    for rank in range(4):
        assert take(ShardStream(urls, batch_size=2, resolution=16, rank=rank, world_size=4), 3)
    loader = make_loader(ShardStream(urls, batch_size=2, resolution=16, rank=1, world_size=2, num_workers=2))
    assert len(take(loader, 4)) == 4


# ---------------------------------------------------------------------------------------- corrupt data
def expected_skips(urls, n_per_shard, bad_per_shard, seed, rounds, damaged=False):
    """Mirror of the round plan of slot 0: skip counts per batch of size 1, over whole rounds."""
    counts, pending = [], 0
    for r in range(rounds):
        rng = random.Random(stream._round_seed(seed, 0, r))
        shard = rng.randrange(len(urls))
        pending += damaged  # a damaged archive counts once, before its samples
        order = list(range(n_per_shard))
        rng.shuffle(order)
        for idx in order:
            if idx in bad_per_shard[shard]:
                pending += 1
            else:
                counts.append(pending)
                pending = 0
    return counts


def test_corrupt_samples_are_skipped_and_counted_exactly(tmp_path):
    # One shard: samples 1, 3, 4 corrupt (truncated PNG, garbage bytes, no image at all); 3 good ones.
    urls, good = write_shards(tmp_path, 1, 6, bad={1: TRUNCATED, 3: GARBAGE, 4: NO_IMAGE})
    batches = take(ShardStream(urls, batch_size=1, resolution=16, seed=5), 30)
    assert [b["skipped"] for b in batches] == expected_skips(urls, 6, [{1, 3, 4}], 5, 10)
    assert sum(b["skipped"] for b in batches) >= 27  # ~3 per round of 3 good samples
    expected = [norm(a) for a in good.values()]
    assert all(any(torch.equal(b["image"][0], e) for e in expected) for b in batches)


def test_truncated_archive_keeps_what_was_read(tmp_path):
    urls, _ = write_shards(tmp_path, 1, 8)
    truncate(urls[0], 9)  # members are cls, png per sample: cuts sample 4's png
    samples, damaged = stream._read_shard(urls[0])
    assert damaged and [sorted(k for k in s if k[0] != "_") for s in samples] == [["cls", "png"]] * 4 + [["cls"]]
    batches = take(ShardStream(urls, batch_size=1, resolution=16, seed=2), 40)
    assert [b["skipped"] for b in batches] == expected_skips(urls, 5, [{4}], 2, 10, damaged=True)


def test_unreadable_shard_raises_naming_it(tmp_path):
    urls, _ = write_shards(tmp_path, 1, 2)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x07" * 3000)
    for url in [str(garbage), str(tmp_path / "gone.tar"), "pipe:exit 3"]:
        with pytest.raises(DataError, match=url.split("/")[-1]):
            next(iter(ShardStream([url], batch_size=1, resolution=16)))


def test_shards_without_images_raise_instead_of_hanging(tmp_path):
    urls, _ = write_shards(tmp_path, 1, 3, bad={0: NO_IMAGE, 1: NO_IMAGE, 2: GARBAGE})
    with pytest.raises(DataError, match="no decodable image"):
        next(iter(ShardStream(urls, batch_size=1, resolution=16)))


# ------------------------------------------------------------------------------------------------- URLs
def test_expand_urls(tmp_path):
    urls, _ = write_shards(tmp_path, 3, 1)
    pattern = str(tmp_path / "s-{000000..000002}.tar")
    assert expand_urls(pattern) == urls
    assert expand_urls([urls[0], str(tmp_path / "s-00000[12].tar")]) == urls
    assert expand_urls(f"{urls[0]}::pipe:cat x.tar::https://h/a-{{0..1}}.tar") == [
        urls[0],
        "pipe:cat x.tar",
        "https://h/a-0.tar",
        "https://h/a-1.tar",
    ]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("s-{000000..000005}.tar", "s-000003.tar"),  # first missing shard named
        ("", "gives no shards"),
        ([], "gives no shards"),
        (" :: ", "gives no shards"),
        ("nothing-*.tar", "no file matches"),
        ("s-{000000..000001.tar", "bad URL pattern"),
        ("s3://bucket/a.tar", "pipe:aws s3 cp"),
        (42, "expected a URL pattern"),
    ],
)
def test_expand_urls_errors(tmp_path, monkeypatch, spec, message):
    write_shards(tmp_path, 3, 1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("{", r"\{")):
        expand_urls(spec, where="data.urls")


def test_webdataset_source(tmp_path):
    urls, _ = write_shards(tmp_path, 2, 1)
    src = registry.build("dataset", {"type": "webdataset", "urls": str(tmp_path / "s-{000000..000001}.tar")})
    assert isinstance(src, WebDataset) and src.urls() == urls
    with pytest.raises(DataError, match="missing.tar"):
        WebDataset(urls=str(tmp_path / "missing.tar")).urls()
    with pytest.raises(PluginError, match="urls"):
        registry.build("dataset", {"type": "webdataset"})


# ----------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = Digits(resolution=32, count=600, seed=1, shard_size=250, cache_dir=str(tmp_path_factory.mktemp("c")))
    d.prepare()
    return d


def test_digits_prepare_writes_manifest_and_is_idempotent(digits):
    manifest = json.load(open(digits.manifest_path))
    assert manifest["count"] == 600 and manifest["resolution"] == 32
    assert [s["count"] for s in manifest["shards"]] == [250, 250, 100]
    assert all(os.path.isfile(u) for u in digits.urls()) and len(digits.urls()) == 3
    stamp = os.stat(digits.manifest_path).st_mtime_ns
    digits.prepare()
    assert os.stat(digits.manifest_path).st_mtime_ns == stamp
    assert os.listdir(os.path.dirname(digits.path)) == [os.path.basename(digits.path)]  # no temp dirs left


def test_digits_images_and_classes(digits):
    samples = [s for url in digits.urls() for s in stream._read_shard(url)[0]]
    assert len(samples) == 600
    assert {int(s["cls"]) for s in samples} == set(range(10))
    imgs = np.stack([np.asarray(Image.open(io.BytesIO(s["png"]))) for s in samples[:100]])
    assert imgs.shape == (100, 32, 32, 3)
    assert imgs.reshape(100, -1).std(axis=1).min() > 20  # every image has a visible digit
    batch = next(iter(ShardStream(digits.urls(), batch_size=8, resolution=32)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["skipped"] == 0


def test_digits_prepare_race_loser_discards_its_copy(tmp_path, monkeypatch):
    a = Digits(count=20, shard_size=10, cache_dir=str(tmp_path))
    b = Digits(count=20, shard_size=10, cache_dir=str(tmp_path))
    real_write = Digits._write

    def write_after_rival(self, out):  # another process finishes first, while we are writing
        monkeypatch.setattr(Digits, "_write", real_write)
        b.prepare()
        real_write(self, out)

    monkeypatch.setattr(Digits, "_write", write_after_rival)
    a.prepare()
    assert a.urls() == b.urls() and len(a.urls()) == 2
    assert os.listdir(os.path.dirname(a.path)) == [os.path.basename(a.path)]


def test_digits_urls_before_prepare_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="not prepared"):
        Digits(count=10, cache_dir=str(tmp_path)).urls()
    for bad in [dict(resolution=4), dict(count=0), dict(shard_size=-1)]:
        with pytest.raises(ValueError):
            Digits(cache_dir=str(tmp_path), **bad)
    with pytest.raises(PluginError, match="resolution"):
        registry.build("dataset", {"type": "digits", "resolution": 2})


def test_digits_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path))
    assert Digits().path.startswith(str(tmp_path / "datasets" / "digits-r32-n20000-s0-v1"))
