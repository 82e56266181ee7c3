"""Style transfer through the engine: loss terms against hand-computed values, optimisation that lowers every
loss, the `ganforge stylize` command end to end, its one-line errors, and checkpoint + resume of a style run."""

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import ckpt_tensors, run_cli
from PIL import Image

from ganforge import config, registry
from ganforge.build import build
from ganforge.run import run
from ganforge.tasks.style_images import load_image
from ganforge.tasks.style_recipe import StyleRecipe
from ganforge_plugins.style.losses import content_distance, gram, style_distance, total_variation

torch.set_num_threads(1)

# A 2-channel 2x2 feature map, small enough to do by hand:
#   channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [1, 0]]
F2 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])


def test_gram_by_hand():
    # f0.f0 = 1+4+9+16 = 30, f0.f1 = 2+3 = 5, f1.f1 = 2; divided by C*H*W = 8
    assert torch.equal(gram(F2), torch.tensor([[[30 / 8, 5 / 8], [5 / 8, 2 / 8]]]))
    # against a zero target: mean of the squared entries = (3.75^2 + 2 * 0.625^2 + 0.25^2) / 4
    assert style_distance(F2, torch.zeros(1, 2, 2)).item() == pytest.approx(3.7265625)


def test_total_variation_and_content_by_hand():
    img = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # vertical neighbours differ by 2 and 2 (mean square 4), horizontal by 1 and 1 (mean square 1)
    assert total_variation(img).item() == 5.0
    assert content_distance(F2, F2 + 0.5).item() == 0.25
    tv = registry.build("style_loss", {"type": "total_variation", "weight": 2.0})
    assert tv(img, {}, {})[0].item() == 10.0


def test_style_loss_is_zero_for_the_style_image_itself():
    ext = registry.build("style_extractor", {"type": "random_multiscale", "filters": 8})
    term = registry.build("style_loss", {"type": "gram", "layers": list(ext.layer_names), "weight": 1e7})
    g = torch.Generator().manual_seed(0)
    style, other = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    targets = term.targets({}, ext(style, ext.layer_names))
    assert term(style, ext(style, ext.layer_names), targets)[0].item() == 0.0
    assert term(other, ext(other, ext.layer_names), targets)[0].item() > 0.0


def _recipe(tmp_path, **over) -> StyleRecipe:
    raw = StyleRecipe().to_dict()
    raw.update(runs_dir=str(tmp_path / "runs"), size=32, init="noise")
    raw["extractor"] = {"type": "random_multiscale", "filters": 8, "sizes": [3, 5, 7]}
    raw["losses"][0]["layers"] = ["k3"]
    raw["losses"][1]["layers"], raw["losses"][1]["layer_weights"] = ["k3", "k5", "k7"], [1, 1, 1]
    raw["train"].update(threads=1, deterministic=True)
    raw["log"]["progress"] = False
    for key, value in over.items():
        from ganforge.overrides import set_dotted

        set_dotted(raw, key, value, "test")
    return config.validate(raw)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_optimisation_lowers_content_style_and_total_loss(tmp_path, optimizer):
    steps = 6 if optimizer == "lbfgs" else 30
    trainer = run("<test>", [], recipe=_recipe(tmp_path, **{"optimizer.type": optimizer, "train.steps": steps}))
    rows = _log(tmp_path / "runs" / "stylize")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    first, last = rows[0], rows[-1]
    for key in ("loss_content", "loss_style", "loss_total"):
        assert last[key] < 0.8 * first[key], (key, first[key], last[key])
    samples = sorted((tmp_path / "runs" / "stylize" / "samples").glob("*.png"))
    assert samples[0].name == "step-00000000.png" and samples[-1].name == f"step-{steps:08d}.png"
    assert trainer.task.render().shape == (1, 3, 32, 32)


def test_resume_continues_bit_identically(tmp_path):
    """Stopped at step 2 and resumed (a new process, through `ganforge run` like any recipe) to step 4: the image,
    the L-BFGS state and every logged loss equal those of an uninterrupted run."""
    whole = run("<test>", [], recipe=_recipe(tmp_path / "a", **{"train.steps": 4}))
    recipe = tmp_path / "b.yaml"
    recipe.write_text(config.dump(_recipe(tmp_path / "b", **{"train.steps": 4})))
    for extra in (["train.max_steps=2"], []):
        r = run_cli("run", recipe, *extra)
        assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and "step 2" in r.stdout
    a, b = (ckpt_tensors(tmp_path / d / "runs/stylize/checkpoints/step-00000004") for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(b["task.modules.image.image"], whole.task.render())  # clamped each step: same values
    rows_a, rows_b = _log(tmp_path / "a/runs/stylize"), _log(tmp_path / "b/runs/stylize")
    assert [r["loss_total"] for r in rows_a] == [r["loss_total"] for r in rows_b]


def _png(path, mode, size):
    rng = np.random.default_rng(len(str(path)))
    chans = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], chans), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if chans == 1 else arr, mode).save(path)
    return path


TINY = ["--size", "24", "--steps", "2", "extractor.filters=8", "log.progress=false", "train.threads=1"]


def test_stylize_cli_end_to_end_on_grey_and_rgba_inputs(tmp_path):
    content, style = _png(tmp_path / "c.png", "L", (30, 20)), _png(tmp_path / "s.png", "RGBA", (16, 16))
    out = tmp_path / "out" / "o.png"
    style2 = _png(tmp_path / "s2.png", "RGB", (20, 20))
    r = run_cli("stylize", "--content", content, "--style", style, "--style", style2, "--style-weight", "3",
                "--style-weight", "1", "--out", out, *TINY, f"runs_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (24, 16)  # longer side 24, the content's 3:2 aspect kept
    run_dir = tmp_path / "runs" / "stylize-c-s_s2"  # a run per content/style pair
    assert (run_dir / "log.jsonl").is_file()
    saved = config.load_recipe(run_dir / "recipe.yaml")
    assert saved.style == [str(style), str(style2)] and saved.style_weights == [3.0, 1.0]


@pytest.mark.parametrize("args, expected", [
    (["--content", "nowhere.png"], "error: content image nowhere.png: no such file"),
    (["--style", "bad.png"], "error: style image bad.png: cannot read it as an image"),
    (["losses.0.layers=[k4]"], "error: losses[0].layers: unknown layer 'k4' for style_extractor "
                               "'random_multiscale' (valid: k3, k5, k7, k11, k15, k23)"),
    (["--recipe", "missing.yaml"], "error: missing.yaml: recipe file not found"),
])
def test_stylize_errors_are_one_line_exit_2(tmp_path, args, expected):
    (tmp_path / "bad.png").write_text("not a png")
    r = run_cli("stylize", *args, *TINY, f"runs_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "runs").exists()  # refused before any run directory


def test_timm_extractor_runs_through_the_engine_by_layer_name(tmp_path):
    """Any timm model by layer name (a tiny random one here; VGG-19 needs weights this machine lacks)."""
    recipe = _recipe(tmp_path, **{"train.steps": 2, "losses.0.layers": ["act1"],
                                  "losses.1.layers": ["act1", "layer1"], "losses.1.layer_weights": [1, 1]})
    recipe.extractor = {"type": "timm", "model": "test_resnet", "random_init": True}
    trainer = run("<test>", [], recipe=recipe)
    assert trainer.step == 2 and trainer.task.extractor.layer_names[:2] == ("act1", "layer1")


def test_vgg_layers_have_gatys_names():
    from torch import nn

    from ganforge_plugins.style.timm_layers import _vgg_names

    trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2))
    assert _vgg_names(trunk) == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1", "relu2_1", "pool2"]


@pytest.mark.parametrize("args, expected", [
    (["extractor.type=timm"], "error: style_extractor 'timm:vgg19': no weights: nothing in the Hugging Face cache "
                              "for timm/vgg19.tv_in1k and no weights: file given;"),
    (["extractor.type=timm", "extractor.model=test_resnet", "extractor.random_init=true"],
     "error: losses[0].layers: unknown layer 'k3' for style_extractor 'timm' (valid: act1, layer1, layer2, layer3, "
     "layer4)"),
])
def test_timm_extractor_errors_are_one_line_exit_2(tmp_path, args, expected):
    # the default extractor block's own options (filters: 64) go when its type changes
    r = run_cli("stylize", *[a for a in TINY if not a.startswith("extractor.")], *args,
                f"runs_dir={tmp_path / 'runs'}", cwd=tmp_path,
                env={"HF_HOME": str(tmp_path / "hf")})  # an empty hub cache, whatever this machine holds
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_shipped_recipe_spells_out_the_stylize_defaults():
    """recipes/style_transfer.yaml and `ganforge stylize` with no --recipe run the same thing."""
    from conftest import ROOT

    shipped = config.load_recipe(ROOT / "recipes" / "style_transfer.yaml").to_dict()
    defaults = StyleRecipe().to_dict()
    assert {**shipped, "name": None} == {**defaults, "name": None}


def test_preserve_colours_keeps_the_content_hues_and_the_result_luminance():
    from ganforge.tasks.style_images import _YIQ, keep_colours

    g = torch.Generator().manual_seed(0)
    result, content = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1, torch.rand(1, 3, 8, 8, generator=g) * 1.2 - 0.6
    mixed = keep_colours(result, content)
    yiq = lambda x: torch.einsum("ij,bjhw->bihw", _YIQ, (x + 1) / 2)  # noqa: E731
    inside = (mixed > -1) & (mixed < 1)  # where nothing was clipped back into [-1, 1]
    assert inside.all(dim=1).float().mean() > 0.5
    keep = inside.all(dim=1, keepdim=True)
    assert torch.allclose(yiq(mixed)[:, :1][keep], yiq(result)[:, :1][keep], atol=1e-5)
    assert torch.allclose(yiq(mixed)[:, 1:][keep.expand(-1, 2, -1, -1)],
                          yiq(content)[:, 1:][keep.expand(-1, 2, -1, -1)], atol=1e-5)


def test_blended_styles_average_the_targets(tmp_path):
    """Weights [1, 0] give exactly the first style's run; [1, 1] a Gram target halfway between the two."""
    a, b = _png(tmp_path / "a.png", "RGB", (32, 32)), _png(tmp_path / "bb.png", "RGB", (32, 32))
    one = run("<test>", [], recipe=_recipe(tmp_path / "1", **{"style": str(a), "train.steps": 2}))
    blend = run("<test>", [], recipe=_recipe(tmp_path / "2", **{"style": [str(a), str(b)], "style_weights": [1, 0],
                                                                "train.steps": 2}))
    assert torch.equal(one.task.render(), blend.task.render())
    half = _recipe(tmp_path / "3", **{"style": [str(a), str(b)], "style_weights": [1, 1]})
    task = build(half).make_task()
    task.setup(Accelerator(cpu=True), None, build(half).schedule(1).at(0.0))
    ext, layers = task.extractor, task.layers
    grams = [gram(ext(load_image(str(p), 32, "style"), layers)["k5"]) for p in (a, b)]
    assert torch.allclose(task.targets[1]["k5"], (grams[0] + grams[1]) / 2)
