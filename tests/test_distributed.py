"""Real multi-process runs: torchrun, two CPU processes, gloo."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import tiny_recipe, write_recipe

pytestmark = pytest.mark.slow


def torchrun(*args, env=None, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ganforge", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_two_processes_finish_with_identical_weights(tmp_path, data_cache):
    recipe = tiny_recipe(tmp_path, data_cache, **{"data.workers": 1, "train.kimg": 0.256})
    out = torchrun("run", write_recipe(tmp_path / "r.yaml", recipe))
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "runs" / "tiny"
    # Global batch is 2 x 8: 0.256 kimg = 16 steps; both ranks' fingerprints (G, D, G_ema) agree.
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert ckpt.name == "step-00000016"
    ranks = json.loads((ckpt / "manifest.json").read_text())["meta"]
    assert ranks["world_size"] == 2 and len(set(ranks["fingerprints"])) == 1
    assert (ckpt / "rank-00000.safetensors").is_file() and (ckpt / "rank-00001.safetensors").is_file()
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[-1]["kimg"] == pytest.approx(0.256)
    assert out.stdout.count("done: step 16") == 1  # only rank 0 reports


def test_rank_divergence_is_caught(tmp_path, data_cache):
    """A plugin that lets ranks drift apart (a non-trainable weight nudged by per-rank noise) must stop the run
    with a clear error instead of silently checkpointing rank 0's copy."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "drift_arch.py").write_text(textwrap.dedent("""
        import torch
        from ganforge import register
        from ganforge_plugins.architectures.dcgan import DCGAN

        class Drift(torch.nn.Module):
            def __init__(self, g):
                super().__init__()
                self.g = g
                self.scale = torch.nn.Parameter(torch.ones(()), requires_grad=False)  # DDP never syncs it
            def forward(self, z):
                with torch.no_grad():
                    self.scale.add_(torch.randn(()) * 1e-3)  # each rank has its own RNG stream
                return self.g(z) * self.scale

        @register("architecture", "drifting_dcgan")
        class Drifting(DCGAN):
            def build_generator(self):
                return Drift(super().build_generator())
    """))
    info = pkg / "drift_arch-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: drift-arch\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ganforge.plugins]\ndrift = drift_arch\n")
    recipe = tiny_recipe(tmp_path, data_cache, **{"model.type": "drifting_dcgan", "train.kimg": 0.16})
    out = torchrun("run", write_recipe(tmp_path / "r.yaml", recipe),
                   env={"PYTHONPATH": f"{pkg}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert out.returncode != 0
    assert "ranks hold different weights" in out.stderr
    assert not list((tmp_path / "runs" / "tiny" / "checkpoints").glob("step-*"))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (netns)")
def test_two_nodes_over_veth(tmp_path, data_cache):
    """Two 'nodes' in separate network namespaces, one torchrun each, talking gloo over a veth pair."""
    ns = [f"gfA{os.getpid()}", f"gfB{os.getpid()}"]
    va, vb = f"va{os.getpid()}"[:15], f"vb{os.getpid()}"[:15]
    setup = [f"ip netns add {ns[0]}", f"ip netns add {ns[1]}",
             f"ip link add {va} type veth peer name {vb}", f"ip link set {va} netns {ns[0]}",
             f"ip link set {vb} netns {ns[1]}", f"ip -n {ns[0]} addr add 10.77.0.1/24 dev {va}",
             f"ip -n {ns[1]} addr add 10.77.0.2/24 dev {vb}", f"ip -n {ns[0]} link set lo up",
             f"ip -n {ns[1]} link set lo up", f"ip -n {ns[0]} link set {va} up", f"ip -n {ns[1]} link set {vb} up"]
    try:
        for c in setup:
            r = subprocess.run(c.split(), capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"network namespaces unavailable: {c}: {r.stderr.strip()}")
        recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data_cache, **{"train.kimg": 0.16}))
        procs = []
        for rank, (n, dev) in enumerate(zip(ns, (va, vb))):
            cmd = ["ip", "netns", "exec", n, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                   "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "10.77.0.1",
                   "--master_port", "29512", "-m", "ganforge", "run", str(recipe)]
            env = {**os.environ, "GLOO_SOCKET_IFNAME": dev}
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:] + outs[1][1][-3000:]
        ckpt = sorted((tmp_path / "runs" / "tiny" / "checkpoints").glob("step-*"))[-1]
        ranks = json.loads((ckpt / "manifest.json").read_text())["meta"]
        assert ranks["world_size"] == 2 and len(set(ranks["fingerprints"])) == 1
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
