"""Bad input through the real CLI: one line naming the culprit, exit code 2, no traceback, no run dir."""

import pytest
from conftest import ROOT, run_cli, tiny_recipe, write_recipe


def _assert_clean_failure(out, needle, runs):
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    assert not runs.exists() or not any(runs.iterdir()), "a run directory was left behind"


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r.update(trian={}), "trian: unknown key"),
    (lambda r: r["train"].update(batch_size="x"), "train.batch_size: expected int"),
    (lambda r: r["model"].update(type="stylegan9"), "unknown architecture plugin 'stylegan9'"),
    (lambda r: r.update(loss={"type": "hinj"}), "unknown loss plugin 'hinj'"),
    (lambda r: r["model"].update(resolution=24), "power of two"),
    (lambda r: r["data"].update(source={"type": "webdataset", "urls": "/nowhere/shard-{0..3}.tar"}),
     "/nowhere/shard-0.tar"),
])
def test_bad_recipe(tmp_path, data_cache, mutate, needle):
    r = tiny_recipe(tmp_path, data_cache)
    mutate(r)
    path = write_recipe(tmp_path / "bad.yaml", r)
    _assert_clean_failure(run_cli("run", path), needle, tmp_path / "runs")


def test_missing_file_and_invalid_yaml(tmp_path):
    _assert_clean_failure(run_cli("run", tmp_path / "missing.yaml"), "missing.yaml: recipe file not found",
                          tmp_path / "runs")
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    _assert_clean_failure(run_cli("run", bad), "broken.yaml: invalid YAML (line", tmp_path / "runs")


def test_bad_override(tmp_path, data_cache):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache))
    _assert_clean_failure(run_cli("run", path, "train.batch_sise=3"), "train.batch_sise: unknown key",
                          tmp_path / "runs")


def test_dry_run_prints_resolved_recipe_and_creates_nothing(tmp_path, data_cache):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache))
    out = run_cli("run", path, "train.batch_size=12", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "batch_size: 12" in out.stdout and "type: nonsaturating" in out.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_shipped_recipes_validate(recipe, capsys, monkeypatch):
    """Every shipped recipe passes --dry-run (validation, one build, the meta-device pre-flight). In-process: the
    CLI path is the same, and 8 fresh interpreters importing torch cost ~40 s of CI."""
    from ganforge.cli import main

    monkeypatch.chdir(ROOT)
    try:
        main(["run", f"recipes/{recipe}", "--dry-run"])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert code in (0, None), f"{recipe}: {out.err}"
    # the resolved recipe was printed (a GAN's model block, or another task's recipe, which names its task first)
    assert ("model:" in out.out or out.out.startswith("task: ")) and "type:" in out.out, out.out


def test_launcher_worker_exit_keeps_codes_and_output(tmp_path, data_cache):
    """Under a launcher (WORLD_SIZE > 1) the process ends with os._exit, skipping the interpreter finalization in
    which gloo's threads could abort the rank: what it printed must still arrive, and the exit code must be the
    one an ordinary exit gives (0, 2 for bad input with its one line)."""
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache))
    worker = {"WORLD_SIZE": "2", "RANK": "0"}
    out = run_cli("run", path, "train.batch_size=12", "--dry-run", env=worker)
    assert out.returncode == 0 and "batch_size: 12" in out.stdout, out.stderr
    assert out.stdout.rstrip().splitlines()[-1] == "imports: []"  # the dump's last line: flushed before os._exit
    _assert_clean_failure(run_cli("run", path, "train.batch_sise=3", env=worker), "train.batch_sise: unknown key",
                          tmp_path / "runs")
