"""Registry: discovery through entry points (the path third parties use), close-match errors, duplicates."""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import run_cli, tiny_recipe, write_recipe

from ganforge import registry
from ganforge.errors import PluginError


def test_builtins_come_from_the_entry_point_group():
    names = {(e.kind, e.name) for e in registry.entries()}
    assert {("architecture", "dcgan"), ("loss", "nonsaturating"), ("balancer", "alternate"),
            ("dataset", "digits"), ("dataset", "webdataset")} <= names
    foreign = [e.source for e in registry.entries() if "[ganforge" not in e.source]
    assert not foreign, f"built-in plugins registered outside the entry point: {foreign}"


def test_unknown_name_lists_close_matches():
    with pytest.raises(PluginError, match=r"unknown loss plugin 'nonsaturatin'.*did you mean 'nonsaturating'"):
        registry.get("loss", "nonsaturatin", where="loss.type")


def test_build_rejects_bad_values_with_the_plugin_named():
    with pytest.raises(PluginError, match=r"model: architecture plugin 'dcgan' rejected.*power of two"):
        registry.build("architecture", {"type": "dcgan", "resolution": 33}, "model")


def _fake_dist(tmp_path, dist: str, module: str, body: str):
    """A real installed distribution (dist-info with entry_points.txt) on sys.path: what pip would leave."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"  # as pip names it (name-version split at "-")
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ganforge.plugins]\n{dist} = {module}\n")


def test_third_party_plugin_is_discovered_and_listed(tmp_path):
    _fake_dist(tmp_path, "gf-extra", "gf_extra", """
        from ganforge import register
        @register("loss", "tp_hinge")
        class TPHinge:
            '''A third-party hinge loss.'''
    """)
    out = subprocess.run([sys.executable, "-m", "ganforge", "plugins"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "tp_hinge" in ln)
    assert "gf_extra:TPHinge [gf-extra 0.1]" in line and "third-party hinge" in line


def _ganforge(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "ganforge", *map(str, args)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "", "WANDB_MODE": "disabled", **(env or {})},
                          timeout=300)


def _dry_run(tmp_path, data_cache, *over, env=None, **recipe_over):
    r = tiny_recipe(tmp_path, data_cache, **recipe_over)
    return _ganforge(tmp_path, "run", write_recipe(tmp_path / "r.yaml", r), "--dry-run", *over, env=env)


CLASH = """
    from ganforge import register
    @register("loss", "nonsaturating")
    class Clash:
        pass
"""


def test_a_clash_with_a_builtin_fails_only_the_recipes_that_use_the_name(tmp_path, data_cache):
    _fake_dist(tmp_path, "gf-clash", "gf_clash", CLASH)
    out = _ganforge(tmp_path, "plugins")
    assert out.returncode == 0, out.stderr
    assert "clash: loss 'nonsaturating'" in out.stdout and "gf_clash:Clash [gf-clash 0.1]" in out.stdout
    ok = _dry_run(tmp_path, data_cache, "loss.type=hinge")
    assert ok.returncode == 0, ok.stderr
    bad = _dry_run(tmp_path, data_cache)  # tiny_recipe's loss is nonsaturating
    err = bad.stderr.strip()
    assert bad.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "loss.type: loss plugin 'nonsaturating' is registered more than once" in err
    assert "ganforge_plugins.losses.nonsaturating:NonSaturating [ganforge" in err and "[gf-clash 0.1]" in err


def test_two_packages_with_one_name_name_both_distributions_when_used(tmp_path, data_cache):
    for dist, mod in (("gf-one", "gf_one"), ("gf-two", "gf_two")):
        _fake_dist(tmp_path, dist, mod, """
            from ganforge import register
            @register("loss", "shared_name")
            class L:
                pass
        """)
    assert _dry_run(tmp_path, data_cache).returncode == 0  # nobody uses the name: nothing fails
    bad = _dry_run(tmp_path, data_cache, "loss.type=shared_name")
    assert bad.returncode == 2 and "[gf-one 0.1]" in bad.stderr and "[gf-two 0.1]" in bad.stderr, bad.stderr


def test_a_broken_package_is_a_warning_and_its_plugins_fail_by_name(tmp_path, data_cache):
    _fake_dist(tmp_path, "gf-broken", "gf_broken", """
        from ganforge import register
        @register("loss", "broken_loss")
        class B:
            pass
        import not_a_real_module_xyz
    """)
    out = _ganforge(tmp_path, "plugins")
    assert out.returncode == 0, out.stderr
    assert "warning: plugin package gf-broken 0.1 (gf_broken) failed to import: ModuleNotFoundError" in out.stderr
    assert "Traceback" not in out.stderr and "broken_loss" not in out.stdout.split("broken:")[0]
    assert "broken: plugin package gf-broken 0.1 failed to import" in out.stdout
    debug = _ganforge(tmp_path, "plugins", env={"GANFORGE_DEBUG": "1"})
    assert "Traceback" in debug.stderr and "not_a_real_module_xyz" in debug.stderr
    ok = _dry_run(tmp_path, data_cache)
    assert ok.returncode == 0, ok.stderr  # built-in recipes run
    bad = _dry_run(tmp_path, data_cache, "loss.type=broken_loss")
    assert bad.returncode == 2 and "plugin package gf-broken 0.1 failed to import" in bad.stderr, bad.stderr


def test_autoload_can_be_disabled_and_a_package_loaded_explicitly(tmp_path):
    _fake_dist(tmp_path, "gf-extra", "gf_extra", """
        from ganforge import register
        @register("loss", "tp_loss")
        class TP:
            pass
    """)
    off = {"GANFORGE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    assert "tp_loss" not in _ganforge(tmp_path, "plugins", "loss", env=off).stdout
    for spec in ("gf-extra", "gf_extra"):  # by distribution / entry-point name, or by module
        out = _ganforge(tmp_path, "-p", spec, "plugins", "loss", env=off)
        assert out.returncode == 0 and "tp_loss" in out.stdout and "[gf-extra 0.1]" in out.stdout, out.stderr
    bad = _ganforge(tmp_path, "-p", "no_such_plugin_pkg", "plugins")
    assert bad.returncode == 2 and "-p no_such_plugin_pkg: cannot load" in bad.stderr


def test_a_plugin_for_another_api_version_is_refused_when_used(tmp_path, data_cache):
    _fake_dist(tmp_path, "gf-future", "gf_future", """
        from ganforge import register
        @register("loss", "future_loss")
        class F:
            api_version = 99
    """)
    assert "REFUSED" in _ganforge(tmp_path, "plugins", "loss").stdout
    bad = _dry_run(tmp_path, data_cache, "loss.type=future_loss")
    assert bad.returncode == 2 and "plugin API 99" in bad.stderr and "implements API 1" in bad.stderr, bad.stderr


def test_plugins_show_lists_options_with_types_and_defaults(tmp_path):
    out = _ganforge(tmp_path, "plugins", "show", "regularizer:r1")
    assert out.returncode == 0, out.stderr
    assert "[ganforge " in out.stdout and "gamma" in out.stdout and "float" in out.stdout and "10.0" in out.stdout
    bad = _ganforge(tmp_path, "plugins", "show", "hinje")
    assert bad.returncode == 2 and "did you mean hinge" in bad.stderr


LOCAL = """
import torch.nn.functional as F
from ganforge import register

@register("loss", "local_softplus")
class LocalSoftplus:
    needs_real_in_g = False

    def d_loss(self, ctx):
        return F.softplus(-ctx.real_logits).mean() + F.softplus(ctx.fake_logits).mean(), {}

    def g_loss(self, ctx):
        return F.softplus(-ctx.fake_logits).mean(), {}
"""


def test_imports_of_a_local_file_resolve_against_the_recipe(tmp_path, data_cache):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "local_loss.py").write_text(LOCAL)
    r = tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.04})
    r["imports"], r["loss"] = ["./local_loss.py"], {"type": "local_softplus"}
    out = run_cli("run", write_recipe(tmp_path / "mine" / "r.yaml", r), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = (tmp_path / "runs" / "tiny" / "recipe.yaml").read_text()
    assert str(tmp_path / "mine" / "local_loss.py") in saved  # absolute: the run resumes from anywhere
    missing = run_cli("run", tmp_path / "mine" / "r.yaml", "imports=[./nope.py]", "--dry-run")
    assert missing.returncode == 2 and "imports[0]: no such file" in missing.stderr


def test_resuming_with_a_changed_plugin_version_warns(tmp_path, data_cache):
    body = """
        from ganforge import register
        from ganforge_plugins.losses.nonsaturating import NonSaturating
        @register("loss", "versioned_loss")
        class V(NonSaturating):
            pass
    """
    _fake_dist(tmp_path, "gf-ver", "gf_ver", body)
    r = tiny_recipe(tmp_path, data_cache, **{"train.max_steps": 10})
    r["loss"] = {"type": "versioned_loss"}
    path = write_recipe(tmp_path / "r.yaml", r)
    assert _ganforge(tmp_path, "run", path).returncode == 0
    info = next(tmp_path.glob("gf_ver-*.dist-info"))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gf-ver\nVersion: 0.2\n")
    again = _ganforge(tmp_path, "run", path, "train.max_steps=20")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "warning: loss was versioned_loss: gf_ver:V [gf-ver 0.1]" in again.stdout + again.stderr
    assert "resuming with versioned_loss: gf_ver:V [gf-ver 0.2]" in again.stdout + again.stderr


@pytest.mark.slow
def test_imports_of_a_local_file_under_torchrun(tmp_path, data_cache):
    """Every rank imports the recipe's file under the same module name and builds the same loss (2 x 8 per step,
    0.08 kimg = 5 steps): the run ends
    with checkpoints both ranks verified (the engine refuses to save when rank fingerprints differ)."""
    (tmp_path / "local_loss.py").write_text(LOCAL)
    r = tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.08})
    r["imports"], r["loss"] = ["./local_loss.py"], {"type": "local_softplus"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ganforge",
           "run", str(write_recipe(tmp_path / "r.yaml", r))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-3000:]
    state = (tmp_path / "runs" / "tiny" / "checkpoints" / "step-00000005" / "state.json").read_text()
    assert '"local_softplus: ganforge_imports.local_loss_' in state  # the provenance the checkpoint records
