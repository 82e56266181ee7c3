"""launch/slurm.sbatch on a real one-node SLURM (launch/slurm_local.sh: munged, slurmctld, slurmd on this machine):
preempted twice, the job requeues itself and finishes with the weights of an uninterrupted run."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, ckpt_tensors, logged_step, tiny_recipe, write_recipe

pytestmark = pytest.mark.slow

SETUP = ROOT / "launch" / "slurm_local.sh"


@pytest.fixture(scope="module")
def slurm_env():
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root (slurmd, munged as the munge user)")
    out = subprocess.run(["bash", str(SETUP), "start"], capture_output=True, text=True, timeout=600)
    if out.returncode == 3:
        pytest.skip(f"SLURM unavailable here: {out.stderr.strip().splitlines()[-1]}")
    conf = Path(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else None
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        assert out.returncode == 0, f"{SETUP} start failed:\n{out.stderr[-3000:]}"
        yield env
    finally:
        if conf is not None:
            # jobs first: their slurmstepd would outlive slurmd and keep training
            subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
            deadline = time.time() + 30
            while _squeue(env) and time.time() < deadline:
                time.sleep(0.5)
            subprocess.run(["bash", str(SETUP), "stop", str(conf.parent)], capture_output=True, timeout=60)
            shutil.rmtree(conf.parent, ignore_errors=True)


def _squeue(env) -> str:
    return subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip()


def _job(env, job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _release(env, job: str) -> None:
    """SLURM holds a requeued job back for two minutes (BeginTime); the test, as its administrator, shortens that
    to 3 s. Not to 0: slurmd revokes the credential of the killed attempt, and a new one issued within the same
    second is refused ("Job credential revoked"), which fails the job."""
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+3"], env=env, check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, cond, output: Path, timeout: float = 120):
    deadline = time.time() + timeout
    while not (value := cond()):
        if time.time() > deadline:
            tail = output.read_text()[-3000:] if output.exists() else "(no job output yet)"
            pytest.fail(f"timed out waiting for {what}; job output:\n{tail}")
        time.sleep(0.1)
    return value


def test_sbatch_requeues_on_preemption_and_finishes_bit_identical(slurm_env, tmp_path, data_cache):
    env = {**slurm_env, "NPROC_PER_NODE": "1", "MASTER_PORT": str(_free_port()), "PYTHON": sys.executable}
    over = {"train.kimg": 0.8, "log.every": 1, "checkpoint.every": 1000, "checkpoint.keep": 10}  # 100 steps
    base = tiny_recipe(tmp_path, data_cache, **over)
    full = write_recipe(tmp_path / "full.yaml", {**base, "name": "full"})
    part = write_recipe(tmp_path / "part.yaml", {**base, "name": "part"})
    run = tmp_path / "runs" / "part"
    log, output = run / "log.jsonl", tmp_path / "job.out"
    # the uninterrupted reference trains meanwhile
    ref = subprocess.Popen([sys.executable, "-m", "ganforge", "run", str(full)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    # the CPU settings the script's header names: no GPUs, one process per node
    sub = subprocess.run(["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={output}",
                          str(ROOT / "launch" / "slurm.sbatch"), str(part)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]

    def state(want: str, restarts: int):
        def check():
            j = _job(env, job)
            if j.get("JobState") in ("FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL"):
                pytest.fail(f"job {job} {j['JobState']} ({j.get('Reason')}); output:\n{output.read_text()[-3000:]}")
            return j.get("JobState") == want and j.get("Restarts") == str(restarts)
        return check

    def running(restarts: int):
        return state("RUNNING", restarts)

    def requeued(restarts: int):
        return state("PENDING", restarts)

    # 1: what --signal=USR1@120 does before the time limit: SIGUSR1 to every process of the step
    _wait("step 5", lambda: logged_step(log) >= 5 and running(0)(), output)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
    _wait("the first requeue", requeued(1), output)
    _release(env, job)
    first = _ckpt_steps(run)
    assert len(first) == 1 and first[0] >= 5

    # 2: SIGTERM to the batch shell alone: the script passes it on to the step as SIGUSR1
    _wait(f"step {first[0] + 5}", lambda: running(1)() and logged_step(log) >= first[0] + 5, output, 180)
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], env=env, check=True)
    _wait("the second requeue", requeued(2), output)
    _release(env, job)

    final = _wait("the job to finish", lambda: (j := _job(env, job)).get("JobState") not in
                  ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", None) and j, output, 240)
    text = output.read_text()
    assert final["JobState"] == "COMPLETED" and final["ExitCode"] == "0:0", text[-3000:]
    assert text.count("slurm.sbatch: preempted") == 2 and text.count("resuming from") == 2, text[-3000:]
    assert "done: step 100," in text
    steps = _ckpt_steps(run)
    assert len(steps) == 3 and steps[0] == first[0] and first[0] < steps[1] < steps[2] == 100, steps
    assert not list(tmp_path.glob(".ganforge-preempted-*"))  # each attempt removes the previous one's marker

    ref_out, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err[-3000:]
    ta = ckpt_tensors(tmp_path / "runs" / "full" / "checkpoints" / "step-00000100")
    tb = ckpt_tensors(run / "checkpoints" / "step-00000100")
    assert ta.keys() == tb.keys() and len(ta) > 20
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"the preempted SLURM job differs from the uninterrupted run in {diff[:5]}"


def _ckpt_steps(run: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in sorted((run / "checkpoints").glob("step-*"))]
