"""Evaluation end to end: `ganforge eval` on a real run, periodic evaluation inside a run (metrics.jsonl, log.jsonl,
the best checkpoint kept), 1 vs 2 processes, the real-feature cache, and one-line errors. The extractor is a
randomly initialised timm network (the numbers mean nothing; the path is the real one)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import run_cli, tiny_recipe, write_recipe

EXTRACTOR = {"type": "timm", "model": "test_resnet", "random_init": True, "input_size": 32}
FLOW = "{type: timm, model: test_resnet, random_init: true, input_size: 32}"


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, data_cache):
    """20 steps of a 16² DCGAN evaluated every 5 steps (FID, KID, IS), keeping 1 checkpoint plus the best."""
    tmp = tmp_path_factory.mktemp("evaluation")
    r = tiny_recipe(tmp, data_cache, name="ev", **{"checkpoint.keep": 1, "checkpoint.every": 10})
    r["metrics"] = {"every": 5, "n": 24, "reals": 64, "batch": 16, "extractor": EXTRACTOR,
                    "compute": ["fid", "kid", {"type": "is", "splits": 2}], "best": "fid"}
    out = run_cli("run", write_recipe(tmp / "r.yaml", r))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "runs" / "ev", out


def test_periodic_evaluation_logs_and_keeps_the_best_checkpoint(evaluated_run):
    run, out = evaluated_run
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for r in rows:
        assert r["fid"] >= 0 and r["n"] == 24 and r["reals"] == 64
        assert r["extractor"] == "timm:test_resnet" and r["checksum"] == "random-init:seed0"
        assert {"kid", "kid_std", "is", "is_std"} <= set(r)
    # the same samples (fixed seed) against the same reals: evaluation does not drift between calls
    logged = {json.loads(x)["step"]: json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()}
    for r in rows:
        assert logged[r["step"]]["metrics/fid"] == pytest.approx(r["fid"])
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    want = min(rows, key=lambda r: r["fid"])
    assert best["step"] == want["step"] and best["value"] == pytest.approx(want["fid"]) and best["metric"] == "fid"
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert f"step-{want['step']:08d}" in kept and "step-00000020" in kept
    assert len(kept) == (1 if want["step"] == 20 else 2), kept  # keep: 1, plus the best
    # the reals' features were computed once and cached; later evaluations read the cache
    assert out.stdout.count("features of 64 real images") == 1, out.stdout


def test_eval_cli_on_a_run_appends_to_metrics_jsonl(evaluated_run):
    run, _ = evaluated_run
    before = len((run / "metrics.jsonl").read_text().splitlines())
    out = run_cli("eval", run, "--metrics", "fid,pr", "--extractor", FLOW, "--n", 24, "--reals", 64, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.splitlines()[-1])
    assert res["step"] == 20 and res["source"] == "eval" and 0 <= res["precision"] <= 1 and res["fid"] >= 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == before + 1 and json.loads(lines[-1])["fid"] == res["fid"]


@pytest.mark.slow
def test_two_processes_give_the_one_process_numbers(evaluated_run, tmp_path):
    run, _ = evaluated_run
    args = ["eval", str(run), "--metrics", "fid,kid,pr", "--extractor", FLOW, "-n", "40", "--json"]
    one = run_cli(*args, "--cache-dir", tmp_path / "c1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "ganforge",
                          *args, "--cache-dir", str(tmp_path / "c2")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    a, b = (json.loads(o.stdout.strip().splitlines()[-1]) for o in (one, two))
    assert a["reals"] == b["reals"] == 512  # the whole dataset, each shard read by one rank
    for k in ("fid", "kid", "kid_std", "precision", "recall"):
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k


def test_missing_weights_fail_before_the_run_dir(tmp_path, data_cache):
    r = tiny_recipe(tmp_path, data_cache, name="nw")
    r["metrics"] = {"every": 5, "extractor": "timm:vit_small_patch14_dinov2"}
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", r))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "timm:vit_small_patch14_dinov2" in lines[0] and "weights" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("metrics,needle", [
    ({"every": 5, "extractor": EXTRACTOR, "best": "fdi"}, "metrics.best: 'fdi'"),
    ({"every": 5, "extractor": EXTRACTOR, "compute": ["fidd"]}, "metrics.compute[0].type"),
    ({"every": 5, "extractor": "inceptoin_fid"}, "metrics.extractor.type"),
    ({"every": 5, "extractor": {**EXTRACTOR, "modle": "x"}}, "metrics.extractor.modle"),
    ({"every": 0}, "metrics.every"),
    ({"every": 5, "extractor": {"type": "inception_fid", "path": "/nonexistent/inc.pt"}}, "/nonexistent/inc.pt"),
])
def test_bad_metrics_blocks_are_one_line_errors(tmp_path, data_cache, metrics, needle):
    r = tiny_recipe(tmp_path, data_cache, name="bad")
    r["metrics"] = metrics
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", r), "--dry-run")
    assert out.returncode == 2 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_logits_metric_on_a_features_only_extractor_is_refused(evaluated_run, tmp_path):
    run, _ = evaluated_run
    ex = tmp_path / "x.pt"
    from ganforge_plugins.extractors.inception import InceptionFID

    opts = InceptionFID.contract_setup(tmp_path)
    flow = f"{{type: inception_fid, path: {opts['path']}, sha256: {opts['sha256']}}}"
    out = run_cli("eval", run, "--metrics", "is", "--extractor", flow, "--n", 8)
    assert out.returncode == 2 and "needs class logits" in out.stderr and not ex.exists(), out.stderr


def test_eval_of_nothing_is_a_one_line_error(tmp_path):
    out = run_cli("eval", tmp_path / "nope", "--extractor", FLOW)
    assert out.returncode == 2 and "no such run directory" in out.stderr and len(out.stderr.splitlines()) == 1


def test_inception_extractor_preprocessing_and_optimised_graph(tmp_path):
    """The frozen, inference-optimised graph gives the loaded network's features; the resize is the identity at
    299² and keeps a flat image flat (StyleGAN's grid_sample resize, border padding)."""
    import torch

    from ganforge import registry
    from ganforge_plugins.extractors.inception import InceptionFID, resize_299

    ex = registry.build("extractor", {"type": "inception_fid", **InceptionFID.contract_setup(tmp_path)})
    x = torch.rand(3, 3, 299, 299) * 2 - 1
    want = ex.raw((((x + 1) / 2 * 255).round() / 128 - 1).clamp(-1, 255 / 128 - 1))
    assert torch.allclose(ex(x)["features"], want, atol=1e-5)
    flat = torch.full((1, 3, 32, 32), 77.0)
    assert torch.allclose(resize_299(flat), torch.full((1, 3, 299, 299), 77.0))
    assert torch.allclose(resize_299(x), x, atol=1e-4)  # grid_sample rounds its float coordinates
