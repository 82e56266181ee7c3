"""``ganforge data pack`` and ``ganforge data inspect`` on real folders and shards."""

from __future__ import annotations

import collections
import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_data import GARBAGE, NO_IMAGE, TRUNCATED, write_shards

from ganforge.datatools import inspect_shards
from ganforge.datatools.epoch import EpochStream
from ganforge.datatools.pack import PackOptions, pack
from ganforge.datatools.shards import expand_urls, read_shard
from ganforge.errors import DataError
from ganforge.stream import ShardStream


def noise(rng, h=16, w=16):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def smooth(rng, h=32, w=32):
    """Photo-like (low frequency) content: what JPEG is made for; noise would exaggerate its error."""
    low = Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
    return np.asarray(low.resize((w, h), Image.Resampling.BICUBIC))


def save(path, arr, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def streamed(out: str, resolution: int) -> list[np.ndarray]:
    """Every packed image, read back through the epoch stream, as uint8 HWC."""
    urls = expand_urls(os.path.join(out, json.load(open(os.path.join(out, "manifest.json")))["urls"]))
    imgs = torch.cat([b["image"] for b in EpochStream(urls, batch_size=8, resolution=resolution)])
    return [((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy() for x in imgs]


def key(arr):
    return arr.tobytes()


@pytest.fixture
def folder(tmp_path):
    """cat/ and dog/ (nested too), four formats, an RGBA png, plus files that must be skipped and listed."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for i in range(5):
        save(src / "cat" / f"c{i}.png", noise(rng))
        save(src / "dog" / "deep" / f"d{i}.jpg", smooth(rng, 24, 40))
    save(src / "dog" / "w.webp", smooth(rng))
    save(src / "cat" / "b.bmp", noise(rng))
    rgba = np.concatenate([noise(rng), np.zeros((16, 16, 1), np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(src / "cat" / "transparent.png")
    good = (src / "cat" / "c0.png").read_bytes()
    (src / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "dog" / "garbage.jpg").write_bytes(b"not a jpeg at all" * 20)
    (src / "dog" / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("hello")
    (src / "cat" / "README").write_text("cats")
    return src


# --------------------------------------------------------------------------------------------- round trips
def test_png_round_trip_is_pixel_exact(tmp_path):
    rng = np.random.default_rng(1)
    originals = [noise(rng) for _ in range(23)]
    for i, arr in enumerate(originals):
        save(tmp_path / "src" / f"{i:03d}.png", arr)
    m = pack(str(tmp_path / "src"), str(tmp_path / "out"), PackOptions(shard_size=5, format="png"), progress=False)
    assert m["count"] == 23 and [s["count"] for s in m["shards"]] == [5, 5, 5, 5, 3] and m["resolution"] == 16
    assert sorted(map(key, streamed(str(tmp_path / "out"), 16))) == sorted(map(key, originals))
    # The training stream serves the same pixels.
    batch = next(iter(ShardStream(expand_urls(str(tmp_path / "out" / m["urls"])), batch_size=8, resolution=16)))
    assert {key(((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()) for x in batch["image"]} <= set(
        map(key, originals))


def test_reencoded_round_trips(tmp_path):
    # png -> jpg (lossy: close), jpg -> png (lossless re-encode of the decoded jpg: exact).
    rng = np.random.default_rng(2)
    originals = [smooth(rng) for _ in range(12)]
    for i, arr in enumerate(originals):
        save(tmp_path / "png" / f"{i:02d}.png", arr)
        save(tmp_path / "jpg" / f"{i:02d}.jpg", arr)
    pack(str(tmp_path / "png"), str(tmp_path / "as_jpg"), PackOptions(format="jpg", quality=95), progress=False)
    got = streamed(str(tmp_path / "as_jpg"), 32)
    for arr in originals:  # every original has a close packed twin (q95, 4:2:0 chroma: ~2 levels of 255)
        err = min(np.abs(g.astype(int) - arr.astype(int)).mean() for g in got)
        assert err < 4.0, err
    pack(str(tmp_path / "jpg"), str(tmp_path / "as_png"), PackOptions(format="png"), progress=False)
    decoded = [np.asarray(Image.open(tmp_path / "jpg" / f"{i:02d}.jpg").convert("RGB")) for i in range(12)]
    assert sorted(map(key, streamed(str(tmp_path / "as_png"), 32))) == sorted(map(key, decoded))


def test_jpeg_bytes_are_kept_when_nothing_changes(tmp_path):
    rng = np.random.default_rng(3)
    save(tmp_path / "src" / "a.jpg", smooth(rng))
    pack(str(tmp_path / "src"), str(tmp_path / "out"), PackOptions(format="jpg"), progress=False)
    (sample,), _ = read_shard(str(tmp_path / "out" / "shard-000000.tar"))
    assert sample["jpg"] == (tmp_path / "src" / "a.jpg").read_bytes() and sample["path.txt"] == b"a.jpg"


# ---------------------------------------------------------------------------------- labels, skips, manifest
def test_labels_skips_and_manifest(folder, tmp_path):
    out = tmp_path / "out"
    # notes.txt lies directly in SRC, but it is no image: every image is in a subfolder, so labels are on.
    m = pack(str(folder), str(out), PackOptions(shard_size=4, resolution=16, format="png", workers=2),
             progress=False)
    assert m["classes"] == ["cat", "dog"] and m["class_counts"] == {"cat": 7, "dog": 6}
    assert m["count"] == 13 and m["resolution"] == 16 and m["sizes"] == {"16x16": 13}
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert m["skipped_count"] == 5 and set(skipped) == {"notes.txt", "cat/README", "cat/truncated.png",
                                                         "dog/garbage.jpg", "dog/empty.png"}
    assert skipped["notes.txt"] == "not an image (.txt)" and "truncated" in skipped["cat/truncated.png"]
    assert [s["count"] for s in m["shards"]] == [4, 4, 4, 1]
    assert all(os.path.getsize(out / s["name"]) == s["bytes"] for s in m["shards"])
    assert json.load(open(out / "manifest.json")) == json.loads(json.dumps(m))
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no temp or old dirs left behind
    # Every sample's cls is its folder's class index.
    samples = [s for u in expand_urls(str(out / m["urls"])) for s in read_shard(u)[0]]
    assert sorted(s["path.txt"].decode() for s in samples) == sorted(
        p for p in _all_files(folder) if p not in skipped)
    for s in samples:
        assert int(s["cls"]) == ["cat", "dog"].index(s["path.txt"].decode().split("/")[0])
    # --overwrite replaces a previous pack (and only a pack); --no-labels drops cls.
    m = pack(str(folder), str(out), PackOptions(shard_size=20, overwrite=True, labels=False), progress=False)
    assert m["classes"] is None and sorted(os.listdir(out)) == ["manifest.json", "shard-000000.tar"]
    assert not any("cls" in s for s in read_shard(str(out / "shard-000000.tar"))[0])
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def _all_files(root):
    return [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]


def test_auto_labels_by_subfolder(tmp_path):
    rng = np.random.default_rng(4)
    for c in ("b", "a"):
        save(tmp_path / "src" / c / "x.png", noise(rng))
    m = pack(str(tmp_path / "src"), str(tmp_path / "out"), PackOptions(), progress=False)
    assert m["classes"] == ["a", "b"] and m["class_counts"] == {"a": 1, "b": 1}


def test_crop_and_pad(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    save(tmp_path / "src" / "wide.png", arr)
    out = {}
    for fit in ("crop", "pad"):
        pack(str(tmp_path / "src"), str(tmp_path / fit), PackOptions(resolution=10, fit=fit, format="png"),
             progress=False)
        (sample,), _ = read_shard(str(tmp_path / fit / "shard-000000.tar"))
        out[fit] = np.asarray(Image.open(io.BytesIO(sample["png"])))
    crop, pad = out["crop"].astype(int), out["pad"].astype(int)
    assert crop.shape == pad.shape == (10, 10, 3)
    assert crop[:, 0, 0].min() > 200 and crop[:, -1, 2].min() > 200  # centre square: red left, blue right
    assert pad[:2].max() == 0 and pad[-2:].max() == 0  # letterboxed: black bands above and below
    assert pad[5, 0, 0] > 200 and pad[5, -1, 2] > 200  # the whole width kept


def test_same_shards_whatever_the_worker_count(folder, tmp_path):
    for w in (1, 2):
        pack(str(folder), str(tmp_path / f"w{w}"), PackOptions(shard_size=5, resolution=8, workers=w),
             progress=False)
    names = sorted(f for f in os.listdir(tmp_path / "w1") if f.endswith(".tar"))
    assert names and names == sorted(f for f in os.listdir(tmp_path / "w2") if f.endswith(".tar"))
    assert all((tmp_path / "w1" / n).read_bytes() == (tmp_path / "w2" / n).read_bytes() for n in names)


def test_pack_errors(folder, tmp_path):
    def fails(match, src=folder, out=None, **opts):
        with pytest.raises(DataError, match=match) as e:
            pack(str(src), str(out or tmp_path / "o"), PackOptions(**opts), progress=False)
        assert "\n" not in str(e.value)

    fails("source folder not found", src=tmp_path / "nope")
    fails("--shard-size must be >= 1", shard_size=0)
    fails("--quality", quality=0)
    fails("--labels needs every image in a class subfolder", src=folder / "dog", labels=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("x")
    fails("not empty; pass --overwrite", out=tmp_path / "full")
    fails("not a ganforge pack", out=tmp_path / "full", overwrite=True)
    assert (tmp_path / "full" / "precious.txt").exists()
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "a.txt").write_text("x")
    fails("no image files", src=tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"junk")
    fails(r"none of the 1 image files .* a.png", src=tmp_path / "broken")


# ------------------------------------------------------------------------------------------------- inspect
def test_inspect_counts_what_training_skips(tmp_path):
    urls, good = write_shards(tmp_path, 3, 5, bad={1: TRUNCATED, 7: GARBAGE, 8: NO_IMAGE})
    s = inspect_shards.inspect(urls, grid=str(tmp_path / "g.png"), grid_n=4, workers=2, progress=False)
    assert s["shards"] == 3 and s["samples"] == 15 and s["images"] == 12 and s["unreadable"] == 3
    labels = collections.Counter(str(int(k[1:]) % 10) for k in good)  # write_shards: cls = index % 10
    assert s["sizes"] == {"16x16": 12} and s["labels"] == dict(sorted(labels.items()))
    assert s["unlabelled"] == 0 and s["damaged_shards"] == []
    epoch_skips = sum(b["skipped"] for b in EpochStream(urls, batch_size=4, resolution=16))
    assert epoch_skips == s["unreadable"]
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 + 2 * 18, 2 + 2 * 18, 3)  # 4 tiles of 16 px, 2 px padding
    quick = inspect_shards.inspect(urls, verify=False, progress=False)
    assert quick["unreadable"] == 2  # header-only: the truncated png's header still parses


def test_cli_pack_then_inspect(folder, tmp_path):
    out = tmp_path / "packed"
    r = run_cli("data", "pack", folder, out, "--shard-size", "4", "--resolution", "16", "--workers", "2",
                "--labels", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"packed 13 images into 4 shard(s) in {out} (jpg, 16x16, 2 classes" in r.stdout
    assert "skipped 5 file(s)" in r.stdout and "dog/garbage.jpg: " in r.stdout
    assert f"urls: {out}/shard-{{000000..000003}}.tar" in r.stdout
    r = run_cli("data", "inspect", f"{out}/shard-{{000000..000003}}.tar", "--grid", tmp_path / "g.png", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "samples:     13 (13 readable images, 0 unreadable)" in r.stdout
    assert "labels:      2 classes (0 cat: 7, 1 dog: 6)" in r.stdout and (tmp_path / "g.png").is_file()
    r = run_cli("data", "inspect", tmp_path / "missing-{0..3}.tar")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: inspect: shard not found: {tmp_path}/missing-0.tar"]
    r = run_cli("data", "pack", folder, out, "--quiet")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: pack: output folder {out} is not empty; pass --overwrite to replace a previous pack"]
