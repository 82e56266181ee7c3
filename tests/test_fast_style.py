"""The fast stylizer (task: fast_style): trained through the engine's loop on the embedded digits, resumed bit for
bit, applied to a folder with `ganforge stylize --model`, its losses falling; its one-line errors (exit 2)."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, ckpt_tensors, run_cli, tiny_recipe, write_recipe
from PIL import Image

from ganforge import config
from ganforge.cli import main
from ganforge.overrides import set_dotted
from ganforge.run import run
from ganforge.tasks.fast_style_recipe import FastStyleRecipe

torch.set_num_threads(1)
STEPS = 24  # batch 2 per step: 0.048 kimg


def fast_recipe(tmp_path, cache, **over) -> dict:
    """A fast-style recipe small enough for seconds of CPU: 16 px digits, a 4-channel network, 4 random filters."""
    raw = FastStyleRecipe().to_dict()
    raw.update(runs_dir=str(tmp_path / "runs"), size=16, name="fs")
    raw["network"] = {"type": "transform_net", "width": 4, "res_blocks": 1, "kernel": 5}
    raw["extractor"] = {"type": "random_multiscale", "filters": 4, "sizes": [3, 5, 7]}
    raw["losses"][0]["layers"] = ["k3"]
    raw["losses"][1]["layers"], raw["losses"][1]["layer_weights"] = ["k3", "k5", "k7"], [1, 1, 1]
    raw["data"] = {"source": {"type": "digits", "resolution": 16, "count": 64, "shard_size": 32,
                              "cache_dir": str(cache)}, "workers": 0}
    raw["train"].update(batch_size=2, kimg=STEPS * 2 / 1000, threads=1, deterministic=True)
    raw["optimizer"]["lr"] = 0.01
    raw["log"].update(every=2, progress=False)
    raw["sample"].update(every=12, n=3)
    raw["checkpoint"]["every"] = 12
    for key, value in over.items():
        set_dotted(raw, key, value, "test")
    return raw


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    """One uninterrupted run, shared by the tests below (each reads it, none changes it)."""
    tmp = tmp_path_factory.mktemp("fast")
    trainer = run("<test>", [], recipe=config.validate(fast_recipe(tmp, data_cache)))
    return tmp, trainer


def test_losses_fall(trained):
    tmp, trainer = trained
    rows = _log(tmp / "runs" / "fs")
    assert [r["step"] for r in rows] == list(range(2, STEPS + 1, 2))
    assert rows[-1]["kimg"] == pytest.approx(STEPS * 2 / 1000)
    early, late = rows[:2], rows[-2:]
    for key in ("loss_style", "loss_total"):
        first, last = np.mean([r[key] for r in early]), np.mean([r[key] for r in late])
        assert last < 0.5 * first, (key, first, last)
    grid = Image.open(sorted((tmp / "runs" / "fs" / "samples").glob("*.png"))[-1])
    assert grid.size == (3 * 18 + 2 + 4, 2 * 18 + 2 + 4)  # inputs over outputs, 2 px padding, 2 px frame


def test_resume_is_bit_identical(trained, tmp_path, data_cache):
    """Stopped at step 12 and resumed in a new process: every tensor of the last checkpoint (network, Adam, lr
    schedule) equals the uninterrupted run's."""
    whole, _ = trained
    recipe = write_recipe(tmp_path / "fs.yaml", fast_recipe(tmp_path, data_cache))
    for extra in (["train.max_steps=12"], []):
        r = run_cli("run", recipe, *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout and "step 12" in r.stdout
    a, b = (ckpt_tensors(d / "runs/fs/checkpoints" / f"step-{STEPS:08d}") for d in (whole, tmp_path))
    assert a.keys() == b.keys() and any(k.startswith("task.modules.net.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss_total"] for r in _log(whole / "runs/fs")] == [r["loss_total"] for r in _log(tmp_path / "runs/fs")]


def _png(path, mode, size, seed=0):
    rng = np.random.default_rng(seed)
    chans = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], chans), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if chans == 1 else arr, mode).save(path)
    return path


def test_stylize_model_on_a_folder(trained, tmp_path):
    """Grey, RGBA and RGB images of two sizes, one in a subfolder: each stylised at its own size, in batches."""
    whole, _ = trained
    src = tmp_path / "photos"
    inputs = [_png(src / "a.png", "L", (20, 12)), _png(src / "b.png", "RGBA", (20, 12), 1),
              _png(src / "sub" / "c.jpg", "RGB", (17, 23), 2)]
    (src / "notes.txt").write_text("not an image: ignored")
    r = run_cli("stylize", "--model", whole / "runs/fs", "--content", src, "--out", tmp_path / "out", "--batch", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stylised 3 image(s)" in r.stdout
    for f, rel in zip(inputs, ("a.png", "b.png", "sub/c.png")):
        out = Image.open(tmp_path / "out" / rel)
        assert out.size == Image.open(f).size and out.mode == "RGB"
        before = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)
        assert np.abs(np.asarray(out, dtype=np.float32) - before).mean() > 10  # stylised, not copied
    # one image, from a checkpoint dir, resized: --out is the file
    ckpt = whole / "runs/fs/checkpoints" / f"step-{STEPS:08d}"
    r = run_cli("stylize", "--model", ckpt, "--content", inputs[2], "--out", tmp_path / "one.png", "--size", "32")
    assert r.returncode == 0, r.stderr[-3000:]
    assert Image.open(tmp_path / "one.png").size == (24, 32)


def _error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, (e.value.code, err)
    return err[0]


def test_stylize_model_errors_are_one_line_exit_2(trained, tmp_path, capsys, data_cache):
    whole, _ = trained
    model = whole / "runs/fs"
    assert _error(capsys, "stylize", "--model", tmp_path / "nope") == \
        f"error: {tmp_path / 'nope'}: no such run directory, checkpoint or exported file"
    assert _error(capsys, "stylize", "--model", model, "--content", tmp_path / "x.png") == \
        f"error: --content {tmp_path / 'x.png'}: no such image file or folder"
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "ok.png", "RGB", (16, 16))
    (tmp_path / "imgs" / "bad.png").write_text("not a png")
    assert _error(capsys, "stylize", "--model", model, "--content", tmp_path / "imgs", "--out",
                  tmp_path / "styled").startswith(
        f"error: content image {tmp_path / 'imgs' / 'bad.png'}: cannot read it as an image")
    assert not (tmp_path / "styled").exists()  # every input is checked before anything is written
    assert _error(capsys, "stylize", "--model", model, "--steps", "3") == \
        "error: --steps: not with --model (the trained network's style and settings are fixed)"
    # a GAN run is not a stylizer: same checkpoint, a GAN recipe beside it
    gan = tmp_path / "gan"
    shutil.copytree(model / "checkpoints", gan / "checkpoints")
    write_recipe(gan / "recipe.yaml", tiny_recipe(tmp_path, data_cache))
    assert _error(capsys, "stylize", "--model", gan) == (
        f"error: --model {gan}: not a fast-stylizer run (a task: gan run); train one with "
        "`ganforge run recipes/fast_style.yaml`")


@pytest.mark.parametrize("override, expected", [
    ("network.width=0", "network: style_network plugin 'transform_net' rejected its options: width must be >= 1"),
    ("network.type=transform", "network.type: unknown style_network plugin 'transform'; did you mean "
                               "'transform_net'?"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("losses.0.layers=[k4]", "losses[0].layers: unknown layer 'k4' for style_extractor 'random_multiscale'"),
    ("data.source.type=ring8", "data.source: 'ring8' yields batches of shape [1, 2], not RGB images"),
])
def test_recipe_errors_are_one_line_exit_2(tmp_path, capsys, override, expected):
    recipe = ROOT / "recipes" / "fast_style.yaml"
    line = _error(capsys, "run", recipe, f"runs_dir={tmp_path / 'runs'}", override)
    assert line.startswith(f"error: {expected}") or line.startswith(f"error: {recipe}: {expected}"), line
    assert not (tmp_path / "runs").exists()  # refused before any run directory
