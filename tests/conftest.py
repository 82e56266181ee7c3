import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Tests never reach the network: wandb is real but disabled; nothing downloads.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tiny_recipe(tmp: Path, cache: Path, **over) -> dict:
    """A DCGAN recipe small enough for a few seconds of CPU."""
    r = {
        "name": "tiny",
        "seed": 1,
        "runs_dir": str(tmp / "runs"),
        "data": {"source": {"type": "digits", "resolution": 16, "count": 512, "shard_size": 128,
                            "cache_dir": str(cache)}, "workers": 0},
        "model": {"type": "dcgan", "resolution": 16, "channels": 3, "latent_dim": 16, "g_width": 8, "d_width": 8},
        "train": {"batch_size": 8, "kimg": 0.16, "threads": 1, "deterministic": True, "ema_kimg": 0.1},
        "log": {"every": 2, "wandb": False, "progress": False},
        "sample": {"every": 10, "n": 16},
        "checkpoint": {"every": 10, "keep": 2},
    }
    for key, value in over.items():
        cur = r
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return r


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_cli(*args, cwd=None, env=None, timeout=600, module=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ganforge", *map(str, args)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def full_and_resumed(tmp: Path, recipe: dict, stop_step: int) -> subprocess.CompletedProcess:
    """Runs ``recipe`` straight through (runs/full) and stopped at ``stop_step`` then resumed (runs/part); returns
    the resumed run's output. Both must succeed."""
    full = write_recipe(tmp / "full.yaml", {**recipe, "name": "full"})
    part = write_recipe(tmp / "part.yaml", {**recipe, "name": "part"})
    a = run_cli("run", full)
    assert a.returncode == 0, a.stderr[-3000:]
    b1 = run_cli("run", part, f"train.max_steps={stop_step}")
    assert b1.returncode == 0 and f"stopped: step {stop_step}" in b1.stdout, b1.stderr[-3000:]
    b2 = run_cli("run", part)
    assert b2.returncode == 0, b2.stderr[-3000:]
    return b2


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One embedded-dataset cache shared by the session (shards are written once)."""
    return tmp_path_factory.mktemp("gf_cache")


def ckpt_state(ckpt: Path) -> dict:
    """The shared state tree of a checkpoint (modules, optimizers, schedulers, plugins, counters)."""
    from ganforge.engine.statefile import load_tree

    return load_tree(ckpt, "state")


def ckpt_tensors(ckpt: Path) -> dict:
    """Every tensor a checkpoint shares across ranks, by tree path (task.modules.G.*, task.optimizers.D.*, ...)."""
    from safetensors.torch import load_file

    return load_file(ckpt / "state.safetensors")


def module_state(ckpt: Path, name: str) -> dict:
    """One module's state_dict (G, D or G_ema) from a checkpoint."""
    return ckpt_state(ckpt)["task"]["modules"][name]


def logged_step(log: Path) -> int:
    """The last step in log.jsonl (0 before the first row); a row being written may be cut short."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except ValueError:
            continue
    return 0


class QuadraticD(torch.nn.Module):
    """D(x) = 1/2 sum(a * x^2): grad_x D = a * x, so R1 = gamma/2 * mean_b sum (a x_b)^2."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.rand(3, 4, 4) + 0.5)

    def forward(self, x):
        return 0.5 * (self.a * x.square()).flatten(1).sum(1)
