"""Registry: discovery through entry points (the path third parties use), close-match errors, duplicates."""

import subprocess
import sys
import textwrap

import pytest

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
    info = tmp_path / f"{dist}-0.1.dist-info"
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


def test_duplicate_name_names_both_sources(tmp_path):
    _fake_dist(tmp_path, "gf-clash", "gf_clash", """
        from ganforge import register
        @register("loss", "nonsaturating")
        class Clash:
            pass
    """)
    out = subprocess.run([sys.executable, "-m", "ganforge", "plugins"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert out.returncode == 2
    err = out.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "duplicate loss plugin 'nonsaturating'" in err
    assert "ganforge_plugins.losses.nonsaturating:NonSaturating" in err and "gf_clash:Clash [gf-clash 0.1]" in err
