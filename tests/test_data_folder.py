"""``ganforge run RECIPE --data PATH``: a folder of images packed once (real packer, real shards), then trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import run_cli, tiny_recipe, write_recipe
from PIL import Image

from ganforge.datatools.folder import source_for
from ganforge.datatools.pack import PackOptions, pack
from ganforge.errors import DataError


@pytest.fixture
def photos(tmp_path):
    """20 small PNGs of two sizes (packed to the model's 16x16), and a file that is not an image."""
    rng = np.random.default_rng(0)
    src = tmp_path / "my photos"  # a space: the run name and the cache path must cope
    src.mkdir()
    for i in range(20):
        h, w = (24, 20) if i % 2 else (16, 16)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / f"img{i:02d}.png")
    (src / "notes.txt").write_text("not an image")
    return src


def _one_line_error(out, *needles):
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data: "), out.stderr
    assert all(str(n) in lines[0] for n in needles), lines[0]


def test_folder_is_packed_once_and_trained_on(tmp_path, data_cache, photos):
    env = {"GANFORGE_CACHE": str(tmp_path / "cache")}
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path, data_cache))
    first = run_cli("run", recipe, "--data", photos, "train.max_steps=2", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "--data: packing 20 images" in first.stdout and "stopped: step 2" in first.stdout
    packs = [p for p in (tmp_path / "cache/packs").iterdir() if p.is_dir()]
    assert len(packs) == 1 and packs[0].name.startswith("my_photos-16px-")
    shards = sorted(packs[0].glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar"]
    manifest = json.loads((packs[0] / "manifest.json").read_text())
    assert manifest["count"] == 20 and manifest["resolution"] == 16 and manifest["skipped_count"] == 1
    run = tmp_path / "runs/tiny-my_photos"  # <recipe>-<folder>: never the digits run of the same recipe
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["data"]["source"] == {"type": "webdataset", "urls": str(packs[0] / "shard-*.tar")}
    assert (run / "checkpoints/step-00000002").is_dir()
    before = shards[0].stat()

    again = run_cli("run", recipe, "--data", photos, "train.max_steps=3", env=env)  # same folder: no repack
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(20 images, cached)" in again.stdout and "packing" not in again.stdout
    assert "resuming from" in again.stdout and "stopped: step 3" in again.stdout
    now = shards[0].stat()
    assert (now.st_ino, now.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p for p in (tmp_path / "cache/packs").iterdir() if p.is_dir()] == packs


def test_bad_data_paths_fail_in_one_line(tmp_path, data_cache, photos):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path, data_cache))
    _one_line_error(run_cli("run", recipe, "--data", tmp_path / "nope"), tmp_path / "nope", "no such folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("no images here")
    _one_line_error(run_cli("run", recipe, "--data", tmp_path / "empty", "--dry-run"), "no image files",
                    tmp_path / "empty")
    assert not (tmp_path / "runs").exists()  # before any run directory


def test_other_data_forms(tmp_path, monkeypatch, photos):
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    # a folder `ganforge data pack` wrote: its own shards, nothing packed again
    m = pack(str(photos), str(tmp_path / "packed"), PackOptions(resolution=16), progress=False)
    block, name = source_for(str(tmp_path / "packed"), 16, prepare=False)
    assert block == {"type": "webdataset", "urls": str(tmp_path / "packed" / m["urls"])} and name == "packed"
    # a shard pattern or .tar: used as is (absolute), a missing one refused now
    block, name = source_for(str(tmp_path / "packed/shard-*.tar"), 16)
    assert block["urls"] == str(tmp_path / "packed/shard-*.tar") and name == "packed"
    with pytest.raises(DataError, match=r"^--data: shard not found: .*shard-000007\.tar$"):
        source_for(str(tmp_path / "packed/shard-000007.tar"), 16)
    # --dry-run checks and names the same pack, without packing
    block, _ = source_for(str(photos), 16, prepare=False)
    assert "/packs/my_photos-16px-" in block["urls"] and not (tmp_path / "cache/packs").exists()
    # an edited folder gets a new pack (the key follows the files); a new resolution too
    again, _ = source_for(str(photos), 16, prepare=False)
    (photos / "img00.png").write_bytes((photos / "img01.png").read_bytes())
    edited, _ = source_for(str(photos), 16, prepare=False)
    bigger, _ = source_for(str(photos), 32, prepare=False)
    assert again == block and len({block["urls"], edited["urls"], bigger["urls"]}) == 3
