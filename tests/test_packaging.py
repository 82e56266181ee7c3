"""ganforge installed as a user gets it (`pip install .`, not editable) works away from the source checkout: the
built-ins install as ``ganforge_plugins`` (never a top-level ``plugins``), are found through the entry point, and
the DCGAN recipe trains. The venv borrows the test venv's dependencies (torch and co.) through a .pth line, so
only ganforge itself is installed (no network, seconds)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_non_editable_install_runs_away_from_the_checkout(tmp_path, data_cache):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # dependencies from the test venv; a plain path line does not run that venv's .pth files, so its editable
    # ganforge finder stays off and only the copy installed below can be imported
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp_path / "src"  # a copy: pip builds in-tree, and the checkout must not get a build/ directory
    for part in ("ganforge", "plugins"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / part, src / part)
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (site / "ganforge_plugins" / "architectures" / "dcgan.py").is_file()
    assert not (site / "plugins").exists(), "built-ins must not install as a top-level 'plugins' package"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    where = subprocess.run([py, "-c", "import ganforge, ganforge_plugins; print(ganforge.__file__); "
                            "print(ganforge_plugins.__file__)"], capture_output=True, text=True, cwd=tmp_path,
                           env=env)
    assert where.returncode == 0 and all(line.startswith(str(site)) for line in where.stdout.split()), where
    listing = subprocess.run([py, "-m", "ganforge", "plugins"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert listing.returncode == 0 and "ganforge_plugins.architectures.dcgan:DCGAN [ganforge" in listing.stdout, \
        listing.stderr
    train = subprocess.run([py, "-m", "ganforge", "run", str(ROOT / "recipes" / "dcgan.yaml"),
                            f"runs_dir={tmp_path / 'runs'}", f"data.source.cache_dir={data_cache}",
                            "data.source.count=512", "data.source.shard_size=128", "data.source.resolution=16",
                            "model.resolution=16", "train.max_steps=4", "train.batch_size=8", "log.wandb=false",
                            "log.progress=false", "data.workers=0", "checkpoint.every=4"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "runs" / "dcgan" / "checkpoints" / "step-00000004" / "manifest.json").is_file()
