"""Images and generators out of a finished run: `ganforge sample / export / info` and ganforge.load_generator, on
one real tiny DCGAN run (and one growing ProGAN run stopped mid-fade), through the real engine and CLI."""

import io
import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli, tiny_recipe, write_recipe
from PIL import Image

import ganforge
from ganforge.apps.artifacts import ArtifactError, StageInfo, load_ema, resolve
from ganforge.engine.samples import save_grid

TILE = 16 + 2  # tiny_recipe's resolution + the grid's padding


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_cache):
    """runs/tiny: 20 steps of a 16² DCGAN, checkpoints at steps 10 and 20, sample grids with recipe seed 1."""
    tmp = tmp_path_factory.mktemp("artifacts")
    out = run_cli("run", write_recipe(tmp / "r.yaml", tiny_recipe(tmp, data_cache)))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "runs" / "tiny"


@pytest.fixture(scope="module")
def progan_run(tmp_path_factory, data_cache):
    """A growing ProGAN (4² -> 8²) stopped halfway through its fade-in: kimg 0.08 = stage 8 at alpha 0.5."""
    tmp = tmp_path_factory.mktemp("artifacts_progan")
    r = tiny_recipe(tmp, data_cache, name="ptiny", **{"train.kimg": 0.08})
    r["model"] = {"type": "progan", "resolution": 8, "channels": 3, "latent_dim": 16, "channel_base": 64,
                  "channel_max": 8, "start_resolution": 4}
    r["schedule"] = {"stages": [{"resolution": 4, "kimg": 0.04}, {"resolution": 8, "fade_kimg": 0.08}]}
    out = run_cli("run", write_recipe(tmp / "r.yaml", r))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "runs" / "ptiny"


def cli(capsys, *args):
    """ganforge.cli.main in this process: (exit code, stdout, stderr)."""
    from ganforge.cli import main

    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def ok(capsys, *args):
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return out


def pixels(path):
    return np.array(Image.open(path))


def one_line_error(capsys, *args, needles=()):
    code, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


def copy_run(run_dir, tmp_path):
    dst = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# ---- sample -------------------------------------------------------------------------------------------------------
def test_sample_grid_has_n_tiles_is_deterministic_and_reproduces_the_runs_grid(capsys, run_dir, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    ok(capsys, "sample", run_dir, "--n", 16, "--seed", 0, "--out", a)
    ok(capsys, "sample", run_dir, "--n", 16, "--seed", 0, "--out", b)
    ok(capsys, "sample", run_dir, "--n", 16, "--seed", 5, "--out", c)
    assert pixels(a).shape == (4 * TILE + 2, 4 * TILE + 2, 3)  # 16 -> 4 x 4 tiles
    assert a.read_bytes() == b.read_bytes()
    assert not np.array_equal(pixels(a), pixels(c))
    # the recipe's seed (1) and sample.n (16): the fixed latents of the run's own grids, through the same G_ema
    ok(capsys, "sample", run_dir, "--n", 16, "--seed", 1, "--out", tmp_path / "own.png")
    assert np.array_equal(pixels(tmp_path / "own.png"), pixels(run_dir / "samples" / "step-00000020.png"))


def test_sample_folder_and_tar_shards(capsys, run_dir, tmp_path):
    ok(capsys, "sample", run_dir, "--n", 10, "--seed", 0, "--out", f"{tmp_path}/imgs/")
    files = sorted((tmp_path / "imgs").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(10)]
    ok(capsys, "sample", run_dir, "--n", 10, "--seed", 0, "--out", tmp_path / "grid.png")
    grid = pixels(tmp_path / "grid.png")  # 10 -> 4 per row; the folder's images are the grid's tiles
    for i, f in enumerate(files):
        img = pixels(f)
        assert img.shape == (16, 16, 3)
        r, col = divmod(i, 4)
        assert np.array_equal(img, grid[2 + r * TILE:2 + r * TILE + 16, 2 + col * TILE:2 + col * TILE + 16])

    ok(capsys, "sample", run_dir, "--n", 10, "--batch", 4, "--out", tmp_path / "one.tar")
    with tarfile.open(tmp_path / "one.tar") as tar:
        names = tar.getnames()
        assert names == [f"{i:06d}.png" for i in range(10)]
        assert Image.open(io.BytesIO(tar.extractfile(names[3]).read())).size == (16, 16)
    out = ok(capsys, "sample", run_dir, "--n", 10, "--batch", 4, "--shard-size", 4, "--out", tmp_path / "s.tar")
    shards = sorted(tmp_path.glob("s-*.tar"))
    assert [p.name for p in shards] == ["s-000000.tar", "s-000001.tar", "s-000002.tar"] and "3 shards" in out
    names = [n for p in shards for n in tarfile.open(p).getnames()]
    assert names == [f"{i:06d}.png" for i in range(10)]


def test_interpolation_strip(capsys, run_dir, tmp_path):
    out = tmp_path / "interp.png"
    ok(capsys, "sample", run_dir, "--n", 3, "--interpolate", 5, "--seed", 2, "--out", out)
    strip = pixels(out)
    assert strip.shape == (3 * TILE + 2, 5 * TILE + 2, 3)  # one row per pair, K frames per row

    def tile(r, c):
        return strip[2 + r * TILE:2 + r * TILE + 16, 2 + c * TILE:2 + c * TILE + 16]

    for r in range(2):  # row r goes from seed 2 + r to seed 3 + r: its last frame is the next row's first
        assert np.array_equal(tile(r, 4), tile(r + 1, 0))
    assert not np.array_equal(tile(0, 0), tile(0, 2))
    gen = ganforge.load_generator(run_dir)  # the first frame is seed 2's own image
    arr = save_grid(gen.sample(1, seed=2), tmp_path / "s2.png")
    assert np.array_equal(arr[2:18, 2:18], tile(0, 0))


# ---- export / load_generator ----------------------------------------------------------------------------------
def test_export_reproduces_sample_bit_for_bit(capsys, run_dir, tmp_path):
    exported, cli_png = tmp_path / "G.safetensors", tmp_path / "cli.png"
    ok(capsys, "export", run_dir, "--out", exported)
    ok(capsys, "sample", run_dir, "--n", 16, "--seed", 0, "--out", cli_png)
    gen = ganforge.load_generator(exported)
    save_grid(gen.sample(16, seed=0), tmp_path / "api.png")
    assert (tmp_path / "api.png").read_bytes() == cli_png.read_bytes()
    assert not gen.module.training and gen.stage == StageInfo(16, 1.0) and gen.step == 20
    # the exported file samples exactly like the run it came from, also through the CLI
    ok(capsys, "sample", exported, "--n", 16, "--seed", 0, "--out", tmp_path / "from_export.png")
    assert (tmp_path / "from_export.png").read_bytes() == cli_png.read_bytes()
    z = gen.latent(4, seed=3)
    assert torch.equal(z, gen.arch.sample_latents(4, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(gen.generate(z), gen.sample(4, seed=3))

    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as f:
        meta, keys = {k: json.loads(v) for k, v in f.metadata().items()}, list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"G", "G_ema"}
    assert meta["model"] == yaml.safe_load((run_dir / "recipe.yaml").read_text())["model"]
    assert meta["stage"] == {"resolution": 16, "alpha": 1.0} and meta["step"] == 20 and meta["kimg"] == 0.16
    assert meta["truncation_psi"] == 1.0 and meta["source"].endswith("step-00000020")
    assert meta["ganforge_format"] == "1" and meta["ganforge_version"] == ganforge.__version__
    raw = ganforge.load_generator(exported, ema=False)  # the raw G: other weights than G_ema
    assert not torch.equal(raw.sample(4, seed=0), gen.sample(4, seed=0))
    assert not list(tmp_path.glob(".*tmp"))  # written through a temp file, renamed


def test_export_from_a_checkpoint_dir_and_load_ema(capsys, run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "step-00000010"
    src = resolve(ckpt)
    assert (src.kind, src.step, src.kimg, src.run_dir, src.ckpt_dir) == ("checkpoint", 10, 0.08, run_dir, ckpt)
    assert src.recipe.model["type"] == "dcgan"
    arch, G, stage = load_ema(src)
    assert not G.training and stage == StageInfo(16, 1.0) and arch.resolution == 16
    ok(capsys, "export", ckpt, "--out", tmp_path / "g10.safetensors")
    gen = ganforge.load_generator(tmp_path / "g10.safetensors")
    assert gen.step == 10
    for k, v in G.state_dict().items():
        assert torch.equal(v, gen.module.state_dict()[k]), k


def test_nothing_is_unpickled(capsys, run_dir, tmp_path, monkeypatch):
    import pickle

    def refuse(*a, **k):
        raise AssertionError("a checkpoint or export was unpickled")

    for mod, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(mod, name, refuse)
    ok(capsys, "export", run_dir, "--out", tmp_path / "G.safetensors")
    ok(capsys, "sample", tmp_path / "G.safetensors", "--n", 4, "--out", tmp_path / "g.png")
    ok(capsys, "info", run_dir)


def test_import_ganforge_stays_cheap():
    code = "import sys, ganforge; assert 'torch' not in sys.modules; assert callable(ganforge.load_generator)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ---- info ---------------------------------------------------------------------------------------------------------
def test_info_text_and_json(capsys, run_dir, tmp_path):
    out = ok(capsys, "info", run_dir)
    for needle in ("recipe:", "tiny", "dcgan (resolution 16)", "step:            20", "kimg:", "0.160",
                   "step-00000020 (verified)", "last losses:", "loss_d="):
        assert needle in out, out
    d = json.loads(ok(capsys, "info", run_dir, "--json"))
    assert (d["step"], d["kimg"], d["model"], d["resolution"]) == (20, 0.16, "dcgan", 16)
    assert d["last_checkpoint"].endswith("step-00000020") and d["best"] is None and d["metrics"] is None
    assert [c["verified"] for c in d["checkpoints"]] == [True, True] and "loss_g" in d["losses"]

    run = copy_run(run_dir, tmp_path)  # with what the evaluation writes
    best = {"metric": "fid", "value": 123.4, "step": 10, "dir": "step-00000010"}
    (run / "checkpoints" / "best.json").write_text(json.dumps(best) + "\n")
    (run / "metrics.jsonl").write_text('{"step": 10, "fid": 150.0}\n{"step": 20, "fid": 123.4}\n{"step": 2')
    out = ok(capsys, "info", run)
    assert "best checkpoint: step-00000010 (fid 123.4 at step 10)" in out and "last metrics:    step=20" in out
    d = json.loads(ok(capsys, "info", run, "--json"))
    assert d["best"] == best and d["metrics"] == {"step": 20, "fid": 123.4}


# ---- errors: one line naming the culprit, exit 2 ---------------------------------------------------------------
def test_nonexistent_run(capsys, tmp_path):
    for cmd in ("sample", "export", "info"):
        extra = ["--out", tmp_path / "G.safetensors"] if cmd == "export" else []
        one_line_error(capsys, cmd, tmp_path / "nope", *extra, needles=[tmp_path / "nope", "no such run"])


def test_run_without_checkpoints(capsys, run_dir, tmp_path):
    run = tmp_path / "runs" / "x"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "recipe.yaml", run / "recipe.yaml")
    one_line_error(capsys, "sample", run, "--out", tmp_path / "g.png",
                   needles=[f"{run}: no checkpoint yet (the run has not reached checkpoint.every); nothing to sample"])
    one_line_error(capsys, "export", run, "--out", tmp_path / "G.safetensors", needles=["nothing to export"])
    assert "last checkpoint: none yet" in ok(capsys, "info", run)  # info still describes it
    assert not (tmp_path / "g.png").exists()


def test_corrupt_checkpoint(capsys, run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    newest = run / "checkpoints" / "step-00000020"
    data = bytearray((newest / "state.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "state.safetensors").write_bytes(bytes(data))
    one_line_error(capsys, "sample", newest, "--out", tmp_path / "g.png",
                   needles=[newest, "does not verify", "state.safetensors", "sha256"])
    # the run dir falls back to the newest checkpoint that verifies, and says which one it skipped
    code, _, err = cli(capsys, "sample", run, "--n", 4, "--out", tmp_path / "g.png")
    assert code == 0 and "skipping checkpoint step-00000020: state.safetensors" in err
    d = json.loads(ok(capsys, "info", run, "--json"))
    assert d["step"] == 10 and [c["verified"] for c in d["checkpoints"]] == [True, False]
    older = run / "checkpoints" / "step-00000010"
    (older / "manifest.json").unlink()
    one_line_error(capsys, "sample", run, "--out", tmp_path / "g.png",
                   needles=[run, "no checkpoint verifies", "step-00000020", "state.safetensors"])


def test_export_that_does_not_match_its_recipe(capsys, run_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good, bad = tmp_path / "G.safetensors", tmp_path / "bad.safetensors"
    ok(capsys, "export", run_dir, "--out", good)
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    model = json.loads(meta["model"])
    meta["model"] = json.dumps({**model, "g_width": model["g_width"] * 2})
    save_file(load_file(good), str(bad), metadata=meta)
    line = one_line_error(capsys, "sample", bad, "--out", tmp_path / "g.png",
                          needles=[bad, "tensor 'G.net.0.weight' has shape", "model 'dcgan' expects"])
    with pytest.raises(ArtifactError, match="G.net.0.weight") as e:
        ganforge.load_generator(bad)
    assert str(e.value) in line


def test_other_user_errors(capsys, run_dir, tmp_path):
    one_line_error(capsys, "sample", run_dir, "--truncation", 0.7, "--out", tmp_path / "g.png",
                   needles=["--truncation 0.7", "'dcgan' does not support truncation"])
    with pytest.raises(ArtifactError, match="does not support truncation"):
        ganforge.load_generator(run_dir).sample(4, truncation=0.5)
    one_line_error(capsys, "sample", run_dir, "--out", tmp_path / "g.jpg", needles=["--out", "g.jpg"])
    one_line_error(capsys, "sample", run_dir, "--interpolate", 1, "--out", tmp_path / "i.png",
                   needles=["--interpolate 1"])
    (tmp_path / "notes.txt").write_text("x")
    one_line_error(capsys, "sample", tmp_path / "notes.txt", needles=["notes.txt", "not a run directory"])
    (tmp_path / "foreign.safetensors").write_bytes(b"not a safetensors file")
    one_line_error(capsys, "sample", tmp_path / "foreign.safetensors", needles=["foreign.safetensors"])
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, "sample", tmp_path / "empty", needles=["empty", "not a run directory"])


# ---- a growing architecture ---------------------------------------------------------------------------------------
def test_progan_checkpoint_is_sampled_at_its_stage(capsys, progan_run, tmp_path):
    src = resolve(progan_run)
    arch, G, stage = load_ema(src)
    assert src.kimg == 0.08 and stage == StageInfo(8, 0.5) and (G.stage, G.alpha) == (8, 0.5)
    ok(capsys, "sample", progan_run, "--n", 4, "--out", tmp_path / "g.png")
    assert pixels(tmp_path / "g.png").shape == (2 * 10 + 2, 2 * 10 + 2, 3)  # 2 x 2 tiles of 8²
    ok(capsys, "export", progan_run, "--out", tmp_path / "P.safetensors")
    gen = ganforge.load_generator(tmp_path / "P.safetensors")
    assert gen.stage == StageInfo(8, 0.5) and (gen.module.stage, gen.module.alpha) == (8, 0.5)
    save_grid(gen.sample(4, seed=0), tmp_path / "api.png")
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "g.png").read_bytes()
    faded = gen.sample(4, seed=0)
    gen.module.set_stage(8, 1.0)  # the stage matters: the fade-in is half done
    assert not torch.equal(faded, gen.sample(4, seed=0))
    d = json.loads(ok(capsys, "info", progan_run, "--json"))
    assert d["stage"] == {"resolution": 8, "alpha": 0.5} and d["resolution"] == 8
    assert "8x8, alpha 0.5" in ok(capsys, "info", progan_run)
