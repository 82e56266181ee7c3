"""Style tasks in two processes (torchrun, CPU, gloo): the fast stylizer trains data-parallel and both ranks end
with the same weights; Gatys' style transfer, one image, refuses to be split with one line."""

import json

import pytest
from conftest import write_recipe
from test_distributed import torchrun
from test_fast_style import fast_recipe
from test_style_transfer import _recipe as gatys_recipe

from ganforge import config

pytestmark = pytest.mark.slow


def test_fast_stylizer_two_processes_identical_weights(tmp_path, data_cache):
    raw = fast_recipe(tmp_path, data_cache, **{"train.kimg": 0.024, "checkpoint.every": 100, "sample.every": 100})
    out = torchrun("run", write_recipe(tmp_path / "fs.yaml", raw))
    assert out.returncode == 0, out.stderr[-4000:]
    # 2 processes x batch 2: 0.024 kimg is 6 steps; the final checkpoint holds both ranks' fingerprints
    ckpt = sorted((tmp_path / "runs" / "fs" / "checkpoints").glob("step-*"))[-1]
    assert ckpt.name == "step-00000006"
    meta = json.loads((ckpt / "manifest.json").read_text())["meta"]
    assert meta["world_size"] == 2 and len(set(meta["fingerprints"])) == 1
    rows = [json.loads(x) for x in (tmp_path / "runs" / "fs" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6 and rows[-1]["kimg"] == pytest.approx(0.024)


def test_gatys_refuses_two_processes_in_one_line(tmp_path):
    recipe = write_recipe(tmp_path / "st.yaml", gatys_recipe(tmp_path).to_dict())
    out = torchrun("run", recipe)
    assert out.returncode != 0
    line = ("error: task style_transfer optimises one image and cannot be split over processes: run it in one "
            "process (the fast stylizer, task fast_style, trains on several)")
    assert out.stderr.count(line) == 1  # rank 0 says it; rank 1 exits with the same status, silently
    assert "Traceback" not in out.stderr.split(line)[0]  # no Python traceback from ganforge before it
    assert not (tmp_path / "runs").exists()
    assert config.load_recipe(recipe).task == "style_transfer"
