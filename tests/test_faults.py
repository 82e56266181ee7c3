"""Fault injection through the real CLI: kill -9 at random steps (one process and torchrun), a disk that fills up
during a save, a run dir that is or turns read-only, corrupt checkpoints, and ``checkpoint.keep`` next to corrupt
leftovers. A fault is one line naming the path and the errno, never a traceback, and never costs a good checkpoint;
a relaunch of the same command continues bit-identically with one log row per step."""

import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ckpt_tensors, run_cli, tiny_recipe, write_recipe

from ganforge.engine import statefile

SEED = int(os.environ.get("GANFORGE_FAULT_SEED", "20240611"))  # which steps the kill tests hit; any seed must pass
TIMING_FREE = {"img_per_s"}  # log fields that legitimately differ between two runs of the same recipe
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- helpers ----------------------------------------------------------------------------------------------------
def _recipe(tmp: Path, cache: Path, runs: Path, **over) -> dict:
    """30 steps of 8 images, a checkpoint every 4 steps, a log row every step, samples only at the end."""
    base = {"train.kimg": 0.24, "checkpoint.every": 4, "checkpoint.keep": 2, "log.every": 1,
            "sample.every": 1000, "runs_dir": str(runs)}
    return tiny_recipe(tmp, cache, **{**base, **over})


def _ckpts(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _published(root: Path) -> list[str]:
    return [n for n in _ckpts(root) if n.startswith("step-")]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FREE} for r in rows]


def _steps_so_far(log: Path) -> list[int]:
    """Steps of the complete rows of a log being written (a row in flight has no newline yet)."""
    try:
        lines = log.read_bytes().split(b"\n")[:-1]
    except FileNotFoundError:
        return []
    out = []
    for x in lines:
        try:
            out.append(json.loads(x)["step"])
        except (ValueError, KeyError, TypeError):
            pass
    return out


def _same_tensors(a: Path, b: Path) -> list[str]:
    """Tensor paths that differ between two checkpoints' shared state (empty: bit-identical)."""
    ta, tb = ckpt_tensors(a), ckpt_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 20
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


def _snapshot(d: Path) -> dict[str, str]:
    """sha256 of every file below ``d`` by relative path."""
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _pages(d: Path) -> int:
    return sum(math.ceil(p.stat().st_size / PAGE) for p in d.iterdir())


def _one_line(out_stderr: str, *needles: str) -> str:
    err = out_stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out_stderr, out_stderr[-3000:]
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process (Linux /proc)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            out[int(stat.parent.name)] = (int(fields[1]), fields[0])
        except (OSError, IndexError, ValueError):
            continue
    return out


def _descendants(pid: int, procs: dict[int, tuple[int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class _Launch:
    """One launch of a command in its own process group, output to files (a pipe nobody reads could block it)."""

    def __init__(self, cmd: list[str], out_dir: Path, n: int):
        self.out, self.err = out_dir / f"launch-{n}.out", out_dir / f"launch-{n}.err"
        self.t0 = time.time_ns()
        with open(self.out, "w") as o, open(self.err, "w") as e:
            # unbuffered: what a launch printed before its SIGKILL is on disk (the "resuming from" line)
            self.proc = subprocess.Popen(cmd, stdout=o, stderr=e, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def kill_at(self, log: Path, step: int, timeout: float = 120) -> int:
        """SIGKILL the whole group once this launch has logged ``step`` (rows an earlier launch left do not count:
        the log must have changed since this launch began); returns the last step logged before the kill."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before step {step}: {self.stderr}"
            assert time.monotonic() < deadline, f"step {step} not logged within {timeout} s"
            try:
                fresh = log.stat().st_mtime_ns > self.t0
            except FileNotFoundError:
                fresh = False
            if fresh and (steps := _steps_so_far(log)) and steps[-1] >= step:
                break
            time.sleep(0.002)
        self.kill()
        return _steps_so_far(log)[-1]

    def kill(self) -> None:
        """SIGKILL the launch and every process below it, all frozen first at one point in time. A process group
        is not enough: torchrun starts each worker in a session of its own, and an orphaned worker would go on
        training (and writing into the run dir) next to the relaunch."""
        frozen: set[int] = set()
        while self.proc.poll() is None or not frozen:
            procs = _processes()
            new = ({self.proc.pid} | _descendants(self.proc.pid, procs)) - frozen
            new = {p for p in new if p in procs and procs[p][1] not in "ZX"}
            if not new:
                break
            for p in new:  # a stopped process forks no more workers: the tree stops growing
                _signal(p, signal.SIGSTOP)
            frozen |= new
        for p in frozen:
            _signal(p, signal.SIGKILL)
        self.proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while any(p in (procs := _processes()) and procs[p][1] not in "ZX" for p in frozen):
            assert time.monotonic() < deadline, "a process survived SIGKILL"
            time.sleep(0.01)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()  # also what a finished launch may have left behind


def _kill_steps(rng: random.Random, n: int, every: int) -> list[int]:
    """Three increasing steps in 2..n-2, at least one a checkpoint step and one between two checkpoints, spaced
    so that the next target lies past the point the previous kill landed."""
    while True:
        s = sorted(rng.sample(range(2, n - 1), 3))
        if min(b - a for a, b in zip(s, s[1:])) >= 3 and any(x % every == 0 for x in s) and any(x % every for x in s):
            return s


def _kill_and_relaunch(cmd, run: Path, n: int, every: int, tmp_path: Path, seed: int, timeout: float):
    """Launch ``cmd``, SIGKILL it at three random steps, relaunching after each kill, then let it finish. Each
    launch must resume from the newest checkpoint published before it (a kill mid-save may publish none)."""
    kills = _kill_steps(random.Random(seed), n, every)
    root = run / "checkpoints"
    landed, launches, newest, left = [], [], [], []
    try:
        for i, step in enumerate(kills):
            newest.append((_published(root) or [None])[-1])
            launches.append(_Launch(cmd, tmp_path, i))
            landed.append(launches[-1].kill_at(run / "log.jsonl", step, timeout=timeout))
            left.append(_ckpts(root))
        newest.append((_published(root) or [None])[-1])
        launches.append(_Launch(cmd, tmp_path, len(kills)))
        rc = launches[-1].wait(timeout=timeout)
    finally:
        for la in launches:
            la.kill()
    where = (f"seed {seed}: killed at steps {kills}, landed at {landed}, leaving {left}, "
             f"relaunched from {newest[1:]}")
    print(where)
    assert rc == 0, f"{where}\n{launches[-1].stderr[-3000:]}"
    assert f"done: step {n}," in launches[-1].stdout, where
    for la, ckpt in zip(launches, newest):
        if ckpt is None:
            assert "resuming from" not in la.stdout, where
        else:
            assert f"resuming from {root / ckpt} (step {int(ckpt[5:])}," in la.stdout, f"{where}\n{la.stdout}"
    return where, launches


@pytest.fixture
def tmpfs():
    """mount(path, size, *options) mounts a tmpfs there; every mount is undone at teardown (lazily if busy)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(path: Path, size: int | str, *options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs at {path}: {r.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for p in reversed(mounted):
        if subprocess.run(["umount", str(p)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(p)], capture_output=True)


def _remount(path: Path, options: str, timeout: float = 30) -> None:
    """``mount -o remount,OPTIONS``; going read-only fails with EBUSY while a file is open for writing: retry."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(["mount", "-o", f"remount,{options}", str(path)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        assert time.monotonic() < deadline, f"remount,{options} {path}: {r.stderr.strip()}"
        time.sleep(0.001)


def _wait_for(cond, what: str, proc=None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc is None or proc.poll() is None, f"exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.002)


# ---- 1. kill -9 ---------------------------------------------------------------------------------------------
def test_kill9_at_random_steps_resumes_bit_identically(tmp_path, data_cache):
    n = 30
    recipe = _recipe(tmp_path, data_cache, tmp_path / "runs", **{"sample.every": 10})  # samples across kills
    ref = run_cli("run", write_recipe(tmp_path / "ref.yaml", {**recipe, "name": "ref"}))
    assert ref.returncode == 0, ref.stderr[-3000:]
    cmd = [sys.executable, "-m", "ganforge", "run", str(write_recipe(tmp_path / "r.yaml", recipe))]
    run, ref_run = tmp_path / "runs/tiny", tmp_path / "runs/ref"
    where, _ = _kill_and_relaunch(cmd, run, n, 4, tmp_path, SEED, timeout=120)
    assert [r["step"] for r in _rows(run)] == list(range(1, n + 1)), where
    assert _strip(_rows(run)) == _strip(_rows(ref_run)), where  # the same losses at every step, not only the end
    assert not _same_tensors(run / f"checkpoints/step-{n:08d}", ref_run / f"checkpoints/step-{n:08d}"), where
    assert _ckpts(run / "checkpoints") == _ckpts(ref_run / "checkpoints"), where  # no temp or trash dirs left
    assert all(statefile.verify(run / "checkpoints" / c) is None for c in _ckpts(run / "checkpoints"))
    early = (0, 1, 2, 5)  # sample.early: step 0, then every/8, every/4, every/2
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"step-{s:08d}.png" for s in (*early, 10, 20, 30)]


@pytest.mark.slow
def test_kill9_of_a_torchrun_group_resumes_bit_identically(tmp_path, data_cache):
    n = 30  # two processes of 8 images: 16 per step
    recipe = _recipe(tmp_path, data_cache, tmp_path / "runs", **{"train.kimg": 0.48, "data.workers": 0})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "ganforge", "run"]
    ref = subprocess.run([*torchrun, str(write_recipe(tmp_path / "ref.yaml", {**recipe, "name": "ref"}))],
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run, ref_run = tmp_path / "runs/tiny", tmp_path / "runs/ref"
    where, _ = _kill_and_relaunch([*torchrun, str(write_recipe(tmp_path / "r.yaml", recipe))], run, n, 4, tmp_path,
                                  SEED + 1, timeout=180)
    assert [r["step"] for r in _rows(run)] == list(range(1, n + 1)), where
    assert _strip(_rows(run)) == _strip(_rows(ref_run)), where
    final = run / f"checkpoints/step-{n:08d}"
    assert not _same_tensors(final, ref_run / f"checkpoints/step-{n:08d}"), where
    assert (final / "rank-00001.safetensors").is_file()
    assert json.loads((final / "manifest.json").read_text())["meta"]["world_size"] == 2
    assert _ckpts(run / "checkpoints") == _ckpts(ref_run / "checkpoints"), where


# ---- 2. disk full -------------------------------------------------------------------------------------------
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, data_cache, tmpfs):
    n = 16
    ref_recipe = _recipe(tmp_path, data_cache, tmp_path / "ref", **{"train.kimg": 0.128, "checkpoint.keep": 1})
    ref = run_cli("run", write_recipe(tmp_path / "ref.yaml", ref_recipe))
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_run = tmp_path / "ref/tiny"
    one = _pages(ref_run / f"checkpoints/step-{n:08d}")
    # keep=1: a save needs room for the previous checkpoint and the new one. Room for one and a half (plus the log
    # and recipe.yaml) lets the first save succeed and makes the second run out of space.
    disk = tmpfs(tmp_path / "disk", (one + one // 2 + 8) * PAGE)
    recipe = write_recipe(tmp_path / "r.yaml", {**ref_recipe, "runs_dir": str(disk)})
    out = run_cli("run", recipe)
    assert out.returncode != 0
    line = _one_line(out.stderr, "ENOSPC", str(disk / "tiny/checkpoints"))
    root = disk / "tiny/checkpoints"
    assert _ckpts(root) == ["step-00000004"], line  # the failed save left no temp dir behind
    assert statefile.verify(root / "step-00000004") is None
    assert [r["step"] for r in _rows(disk / "tiny")] == list(range(1, 9))
    _remount(disk, "size=64m")  # space freed: the same command resumes from the checkpoint that survived
    again = run_cli("run", recipe)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {root / 'step-00000004'} (step 4," in again.stdout
    assert [r["step"] for r in _rows(disk / "tiny")] == list(range(1, n + 1))
    assert not _same_tensors(root / f"step-{n:08d}", ref_run / f"checkpoints/step-{n:08d}")
    assert _ckpts(root) == [f"step-{n:08d}"]


# ---- 3. read-only run dir -----------------------------------------------------------------------------------
@pytest.mark.parametrize("existing", [False, True], ids=["new-run", "resume"])
def test_read_only_runs_dir_at_start_is_one_line(tmp_path, data_cache, tmpfs, existing):
    disk = tmpfs(tmp_path / "ro", "16m")
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(tmp_path, data_cache, disk, **{"train.kimg": 0.064}))
    if existing:
        first = run_cli("run", recipe)
        assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(disk)
    _remount(disk, "ro")
    out = run_cli("run", recipe, "train.kimg=0.128")
    assert out.returncode != 0
    _one_line(out.stderr, "EROFS", str(disk))
    assert _snapshot(disk) == before


@pytest.mark.parametrize("target", ["checkpoints", "run-dir"])
def test_run_dir_turning_read_only_mid_run_is_one_line(tmp_path, data_cache, tmpfs, target):
    runs = tmp_path / "runs"
    # a checkpoints dir of its own mount: the save fails; the whole run dir: the log row of the next step fails
    disk = tmpfs(runs / "tiny/checkpoints" if target == "checkpoints" else runs, "16m")
    root = runs / "tiny/checkpoints"
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(tmp_path, data_cache, runs, **{"train.kimg": 8.0}))
    launch = _Launch([sys.executable, "-m", "ganforge", "run", str(recipe)], tmp_path, 0)
    try:
        _wait_for(lambda: (root / "step-00000004/manifest.json").is_file(), "first checkpoint", launch.proc)
        _remount(disk, "ro")
        rc = launch.wait(timeout=120)
    finally:
        launch.kill()
    assert rc != 0, launch.stdout[-2000:]
    line = _one_line(launch.stderr, "EROFS", str(disk))
    published = _published(root)
    assert "step-00000004" in published and all(statefile.verify(root / c) is None for c in published), line
    assert not [c for c in _ckpts(root) if c.startswith(".")], line


# ---- 4.-6. corrupt checkpoints ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    """A finished 12-step run with checkpoints at 4, 8 and 12 (keep=3), copied by each test that damages it."""
    tmp = tmp_path_factory.mktemp("trained")
    recipe = _recipe(tmp, data_cache, tmp / "runs", **{"train.kimg": 0.096, "checkpoint.keep": 3})
    out = run_cli("run", write_recipe(tmp / "r.yaml", recipe))
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp / "runs/tiny"
    assert _ckpts(run / "checkpoints") == ["step-00000004", "step-00000008", "step-00000012"]
    return run, recipe


def _copy(trained, tmp_path: Path) -> tuple[Path, Path, dict]:
    src, recipe = trained
    run = tmp_path / "runs/tiny"
    shutil.copytree(src, run)
    recipe = {**recipe, "runs_dir": str(tmp_path / "runs")}
    return write_recipe(tmp_path / "r.yaml", recipe), run, recipe


def _damage(path: Path, mode: str) -> None:
    data = path.read_bytes()
    if mode == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # same size, so only the sha256 in the manifest (or JSON parsing, for the manifest) can tell
        garbage = random.Random(f"{SEED}{path}").randbytes(len(data))
        assert garbage != data
        path.write_bytes(garbage)


FILES = ["state.safetensors", "state.json", "rank-00000.safetensors", "rank-00000.json", "manifest.json"]


@pytest.mark.parametrize("mode", ["truncated", "garbage"])
@pytest.mark.parametrize("victim", FILES)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, trained, victim, mode):
    recipe, run, _ = _copy(trained, tmp_path)
    latest = run / "checkpoints/step-00000012"
    _damage(latest / victim, mode)
    out = run_cli("run", recipe)
    assert out.returncode == 0, out.stderr[-3000:]
    warning = [x for x in out.stdout.splitlines() if x.startswith("warning: skipping checkpoint step-00000012")]
    assert len(warning) == 1 and victim in warning[0], out.stdout
    assert f"resuming from {run / 'checkpoints/step-00000008'} (step 8," in out.stdout
    # steps 9..12 again, from step 8: the same weights and the same log rows as the uninterrupted run
    assert not _same_tensors(latest, trained[0] / "checkpoints/step-00000012")
    assert _strip(_rows(run)) == _strip(_rows(trained[0]))
    assert all(statefile.verify(run / "checkpoints" / c) is None for c in _ckpts(run / "checkpoints"))


def test_no_verified_checkpoint_is_one_line_and_touches_nothing(tmp_path, trained):
    recipe, run, _ = _copy(trained, tmp_path)
    root = run / "checkpoints"
    for step, victim, mode in ((4, "manifest.json", "garbage"), (8, "state.safetensors", "truncated"),
                               (12, "rank-00000.json", "garbage")):
        _damage(root / f"step-{step:08d}" / victim, mode)
    before = _snapshot(tmp_path / "runs")
    out = run_cli("run", recipe)
    assert out.returncode == 2
    _one_line(out.stderr, str(root), "no checkpoint verifies", "3 found", "--fresh")
    assert out.stdout.count("warning: skipping checkpoint") == 3
    assert _snapshot(tmp_path / "runs") == before  # not started over: no new log row, checkpoint or recipe


@pytest.mark.parametrize("keep", [1, 2])
def test_keep_never_prunes_good_checkpoints_for_newer_corrupt_ones(tmp_path, trained, keep):
    recipe, run, _ = _copy(trained, tmp_path)
    root = run / "checkpoints"
    _damage(root / "step-00000008/state.safetensors", "garbage")
    _damage(root / "step-00000012/manifest.json", "truncated")
    corrupt = {c: _snapshot(root / c) for c in ("step-00000008", "step-00000012")}
    for leftover in (".tmp-step-00000010", ".trash-step-00000002", ".old-step-00000004"):  # crashed saves, prunes
        (root / leftover).mkdir()
        (root / leftover / "state.safetensors").write_bytes(b"\0" * 4096)
    out = run_cli("run", recipe, "train.max_steps=6", f"checkpoint.keep={keep}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from {root / 'step-00000004'}" in out.stdout and "stopped: step 6," in out.stdout
    # the keep newest up to the one just written are kept, verified; the corrupt newer ones neither count toward
    # keep nor are deleted before the run gets to replace them; what crashed saves and prunes left is gone
    good = ["step-00000004", "step-00000006"][-keep:]
    assert _ckpts(root) == [*good, "step-00000008", "step-00000012"]
    assert all(statefile.verify(root / c) is None for c in good)
    assert {c: _snapshot(root / c) for c in corrupt} == corrupt
    # the run replaces the corrupt ones as it passes their steps and ends as the uninterrupted run did
    out = run_cli("run", recipe, f"checkpoint.keep={keep}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from {root / 'step-00000006'}" in out.stdout
    assert _ckpts(root) == ["step-00000008", "step-00000012"][-keep:]
    assert all(statefile.verify(root / c) is None for c in _ckpts(root))
    assert not _same_tensors(root / "step-00000012", trained[0] / "checkpoints/step-00000012")
    assert _strip(_rows(run)) == _strip(_rows(trained[0]))
