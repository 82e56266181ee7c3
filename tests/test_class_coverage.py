"""Class coverage: the metric on synthetic sets with known answers, the classifier trained on real labelled digit
shards (accuracy, cache, determinism, refusal when it cannot tell classes apart), and both through `ganforge eval`
together with a second extractor."""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_recipe, write_recipe

from ganforge import registry
from ganforge.api import ExtractorData

FLOW = "{type: timm, model: test_resnet, random_init: true, input_size: 32}"


def metric(**opts):
    return registry.build("metric", {"type": "class_coverage", **opts})


def confident_logits(classes: torch.Tensor, k: int = 10, margin: float = 10.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes, k).double() * margin


def labelled_set(n: int, seed: int, classes=range(10)) -> dict:
    """Features: a Gaussian cluster per class (what a good classifier's features look like); logits confident."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(list(classes))
    y = pool[torch.randint(len(pool), (n,), generator=g)]
    centres = torch.randn(10, 8, generator=torch.Generator().manual_seed(99), dtype=torch.float64) * 3
    return {"logits": confident_logits(y), "features": centres[y] + torch.randn(n, 8, generator=g, dtype=torch.float64)}


def test_real_versus_real_covers_every_class_at_the_floor():
    real, fake = labelled_set(4000, 0), labelled_set(2000, 1)
    out = metric().compute(fake, real)
    assert out["classes_covered"] == 10 and out["confident"] == 1.0
    assert 0.3 < out["class_fd_ratio"] < 3, out  # another draw of the same distribution: at the floor
    assert sum(out[f"class_share/{k}"] for k in range(10)) == pytest.approx(1.0)


def test_one_class_gives_one_class_and_a_large_distance():
    real, fake = labelled_set(4000, 0), labelled_set(2000, 1, classes=[3])
    out = metric().compute(fake, real)
    assert out["classes_covered"] == 1 and out["class_share/3"] == 1.0
    assert out["class_fd_ratio"] > 100, out


def test_shares_confidence_and_distance_against_a_hand_count():
    # 20 fakes: 12 of class 0, 7 of class 1, 1 of class 2 (5% exactly: counts as covered at min_share 0.05)
    y = torch.tensor([0] * 12 + [1] * 7 + [2])
    logits = confident_logits(y, margin=10.0)
    logits[:5] = confident_logits(y[:5], margin=1.0)  # softmax top = e/(e + 9) = 0.23: not confident
    real = labelled_set(400, 0)
    fake = {"logits": logits, "features": real["features"][:20] + 1}
    out = metric(min_share=0.05, confidence=0.9).compute(fake, real)
    assert out["classes_covered"] == 3 and out["confident"] == pytest.approx(15 / 20)
    assert metric(min_share=0.1).compute(fake, real)["classes_covered"] == 2
    # the distance is FID's formula on the fakes and the first half of a fixed permutation of the reals
    order = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    want = registry.build("metric", {"type": "fid"}).compute(fake["features"], real["features"][order[:20]])["fid"]
    assert out["class_fd"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("opts,needle", [({"min_share": 0}, "min_share"), ({"confidence": 1.5}, "confidence"),
                                         ({"classifier": "big"}, "classifier")])
def test_bad_options_are_refused_by_name(opts, needle):
    with pytest.raises(Exception, match=needle):
        metric(**opts)


@pytest.fixture(scope="module")
def digits(data_cache):
    src = registry.build("dataset", {"type": "digits", "resolution": 16, "count": 3000, "shard_size": 1000,
                                     "cache_dir": str(data_cache)})
    src.prepare()
    return src


def test_classifier_learns_the_digits_and_is_cached_beside_them(digits, tmp_path):
    logs = []
    data = ExtractorData(digits.urls(), 16, 3, tmp_path, logs.append)
    opts = {"type": "classifier", "size": 16, "steps": 450}  # the full default reaches 99% (bench/RESULTS.md)
    ex = registry.build("extractor", opts)
    ex.prepare(data)
    # held out: every tenth of the 3000 labelled reals (99.0% here; 0.97 leaves room for other CPUs' float order)
    assert ex.accuracy >= 0.97, logs
    assert "held-out accuracy" in logs[0] and f"cached at {Path(digits.path) / '.ganforge'}" in logs[0], logs
    again = registry.build("extractor", opts)
    again.prepare(data)  # loads the file: no second training, the same network
    assert len(logs) == 1 and again.checksum == ex.checksum and again.accuracy == ex.accuracy
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert torch.equal(ex(x)["logits"], again(x)["logits"])


def test_a_classifier_below_its_accuracy_floor_is_refused(digits, tmp_path):
    ex = registry.build("extractor", {"type": "classifier", "steps": 2, "width": 2, "min_accuracy": 0.9})
    with pytest.raises(Exception, match=r"held-out accuracy .* below min_accuracy 90%"):
        ex.prepare(ExtractorData(digits.urls(), 16, 3, tmp_path))


def test_unlabelled_shards_are_refused(tmp_path):
    import webdataset as wds
    from PIL import Image

    with wds.TarWriter(str(tmp_path / "plain.tar")) as w:
        for i in range(4):
            w.write({"__key__": f"{i}", "png": Image.new("RGB", (8, 8))})
    ex = registry.build("extractor", {"type": "classifier"})
    with pytest.raises(Exception, match="carry no class labels"):
        ex.prepare(ExtractorData([str(tmp_path / "plain.tar")], 16, 3, tmp_path))


def test_eval_scores_class_coverage_and_fid_in_one_pass(digits, data_cache, tmp_path):
    """A real run on the 3000 labelled digits, scored by `ganforge eval` with two extractors at once."""
    r = tiny_recipe(tmp_path, data_cache, name="cc", **{"data.source.count": 3000, "data.source.shard_size": 1000,
                                                        "train.kimg": 0.08})
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", r)).returncode == 0
    run = tmp_path / "runs" / "cc"
    metrics = "[{type: class_coverage, classifier: {size: 16, steps: 450}}, fid]"  # the classifier trained above
    out = run_cli("eval", run, "--metrics", metrics, "--extractor", FLOW, "-n", 64, "--json",
                  "--cache-dir", tmp_path / "feat")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["extractor"] == ["classifier", "timm:test_resnet"] and len(res["checksum"]) == 2
    assert 0 <= res["classes_covered"] <= 10 and res["class_fd_floor"] > 0 and res["fid"] >= 0
    assert res["reals"] == 3000


def test_periodic_class_coverage_is_logged_and_picks_the_best_checkpoint(digits, data_cache, tmp_path):
    r = tiny_recipe(tmp_path, data_cache, name="pcc", **{"data.source.count": 3000, "data.source.shard_size": 1000,
                                                         "train.kimg": 0.08})
    r["metrics"] = {"every": 5, "n": 32, "batch": 16, "best": "class_fd_ratio",
                    "compute": [{"type": "class_coverage", "classifier": {"size": 16, "steps": 450}}]}
    out = run_cli("run", write_recipe(tmp_path / "r.yaml", r))
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "runs" / "pcc"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [5, 10] and all(x["extractor"] == "classifier" for x in rows)
    logged = {json.loads(x)["step"]: json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()}
    for x in rows:
        assert logged[x["step"]]["metrics/classes_covered"] == x["classes_covered"]
        assert logged[x["step"]]["metrics/class_share/0"] == x["class_share/0"]
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "class_fd_ratio" and best["value"] == min(x["class_fd_ratio"] for x in rows)
