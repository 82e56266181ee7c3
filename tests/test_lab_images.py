"""The lab on an image recipe: a 2 x 2 x 2-seed sweep of a tiny DCGAN scored with class coverage, interrupted
(SIGTERM) and resumed by the same command without retraining finished runs; the table, results.json and the
plot of each score against each setting."""

import json
import os
import signal
import subprocess
import sys

from conftest import tiny_recipe, write_recipe

# The sweep's mechanics are under test, not the classifier: a tiny one, accepted whatever its accuracy.
METRIC = "[{type: class_coverage, classifier: {size: 16, steps: 30, width: 4, min_accuracy: 0}}]"


def test_image_sweep_resumes_after_an_interruption(tmp_path, data_cache):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.08}))
    out = tmp_path / "lab"
    cmd = [sys.executable, "-m", "ganforge", "lab", str(recipe), "--set", "train.g_opt.lr=1e-4,2e-4",
           "--set", "loss.type=hinge,nonsaturating", "--seeds", "2", "--jobs", "1", "--samples", "32",
           "--metric", METRIC, "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in first.stdout:  # interrupted once two runs are finished and scored
        seen.append(line)
        if line.startswith("[2/8]"):
            first.send_signal(signal.SIGTERM)
            break
    first.communicate(timeout=300)
    assert first.returncode != 0, "".join(seen)
    done = [line.split("]")[1].split(":")[0].strip() for line in seen if line.startswith("[")]
    names = {"1e-4 / hinge / seed 0": "1e-4-hinge-s0", "1e-4 / hinge / seed 1": "1e-4-hinge-s1"}
    assert done == list(names), seen
    logs = {n: (out / "runs" / n / "log.jsonl").read_text() for n in names.values()}

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    progress = [line for line in second.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 8
    for line in progress[:2]:  # finished before the interruption: scored again, not retrained
        assert "resumed or reused" in line, line
    assert all(logs[n] == (out / "runs" / n / "log.jsonl").read_text() for n in logs)

    res = json.loads((out / "results.json").read_text())
    assert res["axes"] == {"train.g_opt.lr": ["1e-4", "2e-4"], "loss.type": ["hinge", "nonsaturating"]}
    assert len(res["runs"]) == 8 and len(res["summary"]) == 4
    for run in res["runs"]:
        assert 0 <= run["classes_covered"] <= 10 and 0 <= run["confident"] <= 1 and run["class_fd"] >= 0
        recipe = (out / "runs" / run["name"] / "recipe.yaml").read_text()
        assert f"type: {run['loss.type']}" in recipe and f"seed: {run['seed']}" in recipe
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| train.g_opt.lr | loss.type | seeds | classes covered | confident % |")
    assert len(table) == 2 + 4
    from PIL import Image

    plot = Image.open(out / "plot.png")  # a panel per (score, axis): 4 class-coverage scores (not the floor) x 2
    assert plot.size == (2 * 326 + 6, 4 * 216 + 6)
