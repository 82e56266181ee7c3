"""examples/plugin-template as a plugin author gets it: pip-installed as a real distribution (into a private
directory, never into this environment), found through its entry point, trained by ``ganforge run``, and passing
its own tests, which call ``ganforge.testing``."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

TEMPLATE = ROOT / "examples" / "plugin-template"
PLUGINS = ("template_conv", "template_softplus", "template_every_other")
DIST = "ganforge-plugin-template"

pytestmark = pytest.mark.slow


def _run(args, env, timeout=600) -> subprocess.CompletedProcess:
    # run from the checkout root: the recipe and the template's tests are addressed by their paths in it
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _why(out: subprocess.CompletedProcess) -> str:
    return (f"exit code {out.returncode}\n--- stdout (tail)\n{out.stdout[-2000:]}\n"
            f"--- stderr (tail)\n{out.stderr[-3000:]}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Install the template once per module; return (env for subprocesses that see it, a scratch directory)."""
    tmp = tmp_path_factory.mktemp("plugin_template")
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources, which must not land in the
    # checkout (nor race with a second worker building the same folder).
    src = tmp / "src"
    shutil.copytree(TEMPLATE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = tmp / "site"
    out = _run(["-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                "--disable-pip-version-check", "--target", target, src], dict(os.environ), timeout=300)
    assert out.returncode == 0, f"pip install of {TEMPLATE} failed: {_why(out)}"
    assert list(target.glob("ganforge_plugin_template-0.1.0.dist-info")), f"no dist-info in {sorted(target.iterdir())}"
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled"}
    env.pop("GANFORGE_DISABLE_PLUGIN_AUTOLOAD", None)  # the point is that installing is enough
    return env, tmp


def test_plugins_are_listed_with_their_distribution(installed):
    env, _ = installed
    out = _run(["-m", "ganforge", "plugins"], env)
    assert out.returncode == 0, _why(out)
    for name in PLUGINS:
        lines = [ln for ln in out.stdout.splitlines() if ln.split()[:1] == [name]]
        assert lines, f"{name} is not listed by `ganforge plugins`: {_why(out)}"
        assert f"{DIST} 0.1.0" in lines[0], f"{name} is not credited to {DIST} 0.1.0: {lines[0]!r}"
    assert DIST not in out.stderr, f"the template warned at start-up: {_why(out)}"


def test_recipe_trains_20_steps(installed, data_cache):
    env, tmp = installed
    runs = tmp / "runs"
    out = _run(["-m", "ganforge", "run", TEMPLATE / "recipe.yaml", f"runs_dir={runs}", "log.wandb=false",
                "log.progress=false", "train.max_steps=20", "train.batch_size=8", "train.threads=1",
                "data.source.count=512", "data.source.shard_size=128", f"data.source.cache_dir={data_cache}",
                "log.every=5", "sample.every=10", "checkpoint.every=10"], env)
    assert out.returncode == 0, f"`ganforge run` of the template recipe failed: {_why(out)}"
    ckpts = sorted(p.name for p in (runs / "template" / "checkpoints").glob("step-*"))
    assert "step-00000020" in ckpts, f"no checkpoint at step 20 (found {ckpts}): {_why(out)}"
    assert (runs / "template" / "samples" / "step-00000020.png").is_file(), _why(out)


def test_template_tests_pass(installed):
    env, _ = installed
    out = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", TEMPLATE.relative_to(ROOT) / "tests"], env)
    assert out.returncode == 0, f"examples/plugin-template/tests failed: {_why(out)}"
    assert " passed" in out.stdout and "skipped" not in out.stdout, _why(out)
