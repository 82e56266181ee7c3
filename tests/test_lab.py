"""The mode-collapse lab: mixture datasets, mode-coverage metrics on hand-made samples, the MLP and spectral-norm
options, and a short sweep through the real CLI (table, scatter plots, results.json, errors)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli, write_recipe

from ganforge import registry
from ganforge_plugins.metrics.mode_coverage import (
    high_quality_share,
    mode_coverage,
    modes_covered,
    reverse_kl,
    scatter_image,
)


def grid():
    return registry.build("dataset", {"type": "grid25"})


def test_mixture_geometry():
    g = grid()
    assert sorted({tuple(m) for m in g.means.tolist()}) == [(x, y) for x in (-4, -2, 0, 2, 4) for y in
                                                            (-4, -2, 0, 2, 4)]
    assert g.std == 0.05
    ring = registry.build("dataset", {"type": "ring8"})
    assert ring.means.shape == (8, 2) and torch.allclose(ring.means.norm(dim=1), torch.ones(8)) and ring.std == 0.01


def test_mixture_stream_is_deterministic_resumable_and_per_rank():
    g = grid()
    it = g.batches(batch_size=64, seed=3, rank=0, world_size=1, start_batch=0)
    first = [next(it)["image"] for _ in range(4)]
    again = g.batches(batch_size=64, seed=3, rank=0, world_size=1, start_batch=3)
    assert torch.equal(next(again)["image"], first[3]) and first[0].shape == (64, 2)
    other = next(g.batches(batch_size=64, seed=3, rank=1, world_size=2, start_batch=0))["image"]
    assert not torch.equal(other, first[0])


def test_real_samples_score_like_the_protocol_says():
    g = grid()
    x = g.sample(2500, torch.Generator().manual_seed(0))
    m = mode_coverage(x, g.means, g.std)
    # within 3 sigma of the centre in 2D: 1 - exp(-9/2) = 98.9%
    assert m["modes"] == 25 and m["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.006)
    assert m["reverse_kl"] < 0.02


def test_metrics_on_hand_made_samples():
    g = grid()
    means = g.means
    assert mode_coverage(means, means, 0.05) == {"modes": 25.0, "high_quality": 1.0, "reverse_kl": 0.0}
    one = means[:1].repeat(10, 1)  # everything on one mode: KL(q || uniform) = log 25
    assert modes_covered(one, means, 0.05) == 1 and reverse_kl(one, means, 0.05) == pytest.approx(math.log(25))
    # 5 modes hit twice each by high-quality samples, plus 10 samples half-way between modes
    hit = means[:5].repeat(2, 1) + torch.tensor([0.1, 0.0])  # 0.1 < 3 sigma = 0.15 away
    between = torch.tensor([[1.0, 1.0]]).repeat(10, 1)
    x = torch.cat([hit, between])
    assert modes_covered(x, means, 0.05) == 5 and high_quality_share(x, means, 0.05) == 0.5
    assert reverse_kl(x, means, 0.05) == pytest.approx(math.log(5))  # q uniform on 5 of 25 modes
    assert modes_covered(x, means, 0.05, min_count=3) == 0
    assert reverse_kl(between, means, 0.05) == math.inf and high_quality_share(between, means, 0.05) == 0.0
    assert modes_covered(np.asarray(x), means.numpy(), 0.05) == 5  # numpy in, same answer


def test_metric_plugin_and_scatter():
    metric = registry.build("metric", {"type": "mode_coverage", "dataset": "ring8"}, "metric")
    assert metric.compute(metric.means)["modes"] == 8
    img = scatter_image(metric.means, 1.5, 64, metric.means, metric.std)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and (img != 255).any()


def test_mlp_packing_and_spectral_norm():
    arch = registry.build("architecture", {"type": "mlp", "pack": 4, "d_spectral_norm": True, "g_width": 8,
                                           "d_width": 8, "latent_dim": 3})
    G, D = arch.build_generator(), arch.build_discriminator()
    x = G(arch.sample_latents(12))
    assert x.shape == (12, 2) and D(x).shape == (3,)  # 4 samples per logit
    assert all(torch.nn.utils.parametrize.is_parametrized(m) for m in D.modules() if isinstance(m, torch.nn.Linear))
    with pytest.raises(ValueError, match="multiple of pack=4"):
        D(x[:5])
    assert arch.render_samples(x).shape == (1, 3, 256, 256)


def test_dcgan_spectral_norm_option():
    arch = registry.build("architecture", {"type": "dcgan", "resolution": 16, "g_width": 4, "d_width": 4,
                                           "d_spectral_norm": True, "d_batch_norm": False})
    D = arch.build_discriminator()
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    assert D(torch.zeros(2, 3, 16, 16)).shape == (2,)
    plain = registry.build("architecture", {"type": "dcgan", "resolution": 16}).build_discriminator()
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in plain.modules())


def _lab(tmp_path, *args):
    return run_cli("lab", ROOT / "recipes/lab_ring8.yaml", "train.kimg=1.024", "log.every=2",
                   "model.g_width=16", "model.d_width=16", "--out", tmp_path / "lab", *args)


def test_lab_smoke_through_the_cli(tmp_path):
    """2 losses x 2 balancers x 2 seeds, 4 iterations each: a table, scatter PNGs, results and real run dirs."""
    out = _lab(tmp_path, "--loss", "nonsaturating", "--loss", "hinge:margin=2", "--balancer", "alternate",
               "--balancer", "skip_d:threshold=0.5,max_skips=2", "--seeds", "2", "--jobs", "2", "--samples", "500")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("loss "))
    rows = lines[head + 2:head + 6]
    skip = "skip_d:threshold=0.5,max_skips=2"
    assert [r.split()[:2] for r in rows] == [["nonsaturating", "alternate"], ["nonsaturating", skip],
                                             ["hinge:margin=2", "alternate"], ["hinge:margin=2", skip]]
    assert all(" ± " in r for r in rows) and "modes (of 8)" in lines[head]
    lab = tmp_path / "lab"
    res = json.loads((lab / "results.json").read_text())
    assert len(res["runs"]) == 8 and res["samples"] == 500 and all(0 <= r["modes"] <= 8 for r in res["runs"])
    assert (lab / "scatter.png").is_file() and len(list((lab / "scatter").glob("*.png"))) == 8
    assert (lab / "table.md").read_text().startswith("| loss | balancer |")
    run = lab / "runs" / "nonsaturating-skip_d-threshold-0.5-max_skips-2-s1"
    recipe = (run / "recipe.yaml").read_text()
    assert "type: skip_d" in recipe and "seed: 1" in recipe
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] == 4
    assert list((run / "samples").glob("*.png"))  # the sample grid is a scatter plot (render_samples)


@pytest.mark.parametrize("args, needle", [
    (["--loss", "hinj"], "loss.type: unknown loss plugin 'hinj'; did you mean 'hinge'"),
    (["--balancer", "skip_d:threshold=-1"], "balancer: balancer plugin 'skip_d' rejected its options: threshold "
                                             "must be a finite number > 0"),
    (["--balancer", "skip_d:treshold=1"], "balancer.treshold: unknown option for balancer 'skip_d' "
                                           "(did you mean 'threshold'?)"),
    (["--balancer", "adaptive:high=1.5"], "high must be in [0, 1] for signal 'accuracy', got 1.5"),
    (["--seeds", "x"], "--seeds 'x': expected a count"),
    (["data.source={type: digits}", "--metric", "mode_coverage"], "mode_coverage: needs a 2D mixture dataset"),
    (["--metric", "class_coverage"], "'ring8' is a 2D mixture; score it with mode_coverage"),
    (["--set", "train.g_opt.lrr=1e-4,2e-4"], "train.g_opt.lrr"),
    (["--set", "train.g_opt.lr"], "expected KEY=VALUE[,VALUE...]"),
    (["--set", "train.batch_size=8,-1"], "train.batch_size"),
])
def test_lab_errors_are_one_line_and_nothing_runs(tmp_path, capsys, args, needle):
    code, err = main_in_process(capsys, "lab", ROOT / "recipes/lab_ring8.yaml", "--out", tmp_path / "lab", *args)
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "lab").exists()


def main_in_process(capsys, *args) -> tuple[int, str]:
    """``ganforge ARGS`` through the real CLI entry point, in this process (no interpreter start-up)."""
    from ganforge.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("block, needle", [
    ({"balancer": {"type": "skip_d", "threshold": 0.0}}, "balancer: balancer plugin 'skip_d' rejected its "
                                                         "options: threshold must be a finite number > 0"),
    ({"balancer": {"type": "skip_d", "max_skip": 3}}, "balancer.max_skip: unknown option for balancer 'skip_d' "
                                                      "(did you mean 'max_skips'?)"),
    ({"loss": {"type": "wgan_gp", "lambda": 10}}, "loss.lambda: unknown option for loss 'wgan_gp'"),
    ({"augment": {"type": "ada", "targt": 0.6}}, "augment.targt: unknown option for augment 'ada' "
                                                 "(did you mean 'target'?)"),
])
def test_run_errors_for_bad_plugin_options(tmp_path, capsys, block, needle):
    recipe = {"name": "bad", "runs_dir": str(tmp_path / "runs"), "data": {"source": {"type": "ring8"}},
              "model": {"type": "mlp"}, "log": {"wandb": False}, **block}
    code, err = main_in_process(capsys, "run", write_recipe(tmp_path / "bad.yaml", recipe), "--dry-run")
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "runs").exists()


def test_run_error_for_bad_augment_value(tmp_path):
    """Augment values are checked when the Trainer builds it: still one line, before any run directory exists."""
    recipe = {"name": "bad", "runs_dir": str(tmp_path / "runs"), "data": {"source": {"type": "ring8"}},
              "model": {"type": "mlp"}, "log": {"wandb": False},
              "augment": {"type": "diffaugment", "policy": "color,zoom"}}
    out = run_cli("run", write_recipe(tmp_path / "bad.yaml", recipe))
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and "augment: augment plugin 'diffaugment' " \
        "rejected its options: policy 'color,zoom'" in err, err
    assert not (tmp_path / "runs").exists()


def test_recipe_blocks_are_labelled_by_what_they_are(tmp_path):
    from ganforge.apps.lab import plan

    _, axes, specs = plan(str(ROOT / "recipes/lab_ring8.yaml"), ["balancer={type: skip_d, threshold: 0.5}"],
                          {"balancer": ["recipe", "alternate"]}, [0, 1], tmp_path)
    assert [a.label for a in axes] == ["balancer"]
    assert [(s.settings, s.seed) for s in specs] == [
        ({"balancer": "skip_d:threshold=0.5"}, 0), ({"balancer": "skip_d:threshold=0.5"}, 1),
        ({"balancer": "alternate"}, 0), ({"balancer": "alternate"}, 1)]
    assert axes[0].variants[0].block is None and specs[0].name == "skip_d-threshold-0.5-s0"
    assert specs[0].recipe.balancer == {"type": "skip_d", "threshold": 0.5}
    assert specs[2].recipe.balancer["type"] == "alternate"


def _strict(text):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_lab_rerun_reuses_runs_and_an_unfinished_run_is_never_scored(tmp_path):
    first = _lab(tmp_path, "--seeds", "2", "--jobs", "1", "--samples", "100")
    assert first.returncode == 0, first.stderr[-3000:]
    timed = _strict((tmp_path / "lab/results.json").read_text())
    assert all(r["seconds"] > 0 for r in timed["runs"])
    again = _lab(tmp_path, "--seeds", "2", "--jobs", "1", "--samples", "100")
    assert again.returncode == 0, again.stderr[-3000:]
    row = next(line for line in again.stdout.splitlines() if line.startswith("lab_ring8 "))
    assert "resumed or reused" in again.stdout and row.endswith("reused"), again.stdout
    reused = _strict((tmp_path / "lab/results.json").read_text())
    assert all(r["seconds"] is None for r in reused["runs"]) and reused["summary"][0]["seconds"] is None
    assert [r["modes"] for r in reused["runs"]] == [r["modes"] for r in timed["runs"]]  # same runs, same scores
    # a run that stops before the end of its schedule (max_steps here, SIGTERM alike) stops the sweep
    short = run_cli("lab", ROOT / "recipes/lab_ring8.yaml", "train.kimg=1.024", "train.max_steps=2",
                    "model.g_width=16", "model.d_width=16", "--out", tmp_path / "short", "--seeds", "1")
    err = short.stderr.strip()
    assert short.returncode != 0 and "stopped at step 2 before the end of its schedule" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "short/results.json").exists()


def test_set_values_split_at_top_level_commas_only():
    from ganforge.apps.lab import parse_set, split_values

    assert split_values("1e-4,2e-4") == ["1e-4", "2e-4"]
    assert split_values("[0.5, 0.99],[0.0, 0.99]") == ["[0.5, 0.99]", "[0.0, 0.99]"]
    assert split_values("null,{type: diffaugment, policy: 'color,translation'}") == [
        "null", "{type: diffaugment, policy: 'color,translation'}"]
    axis = parse_set("train.g_opt.lr=1e-4,2e-4")
    assert axis.label == "train.g_opt.lr" and [v.override for v in axis.variants] == [
        "train.g_opt.lr=1e-4", "train.g_opt.lr=2e-4"]
