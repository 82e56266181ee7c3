import builtins
import errno
import json
import math
import os
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ganforge.engine import statefile as sf
from ganforge.engine.statefile import CheckpointError


def same(a, b) -> bool:
    """Deep equality that also checks container types, dtypes and bit patterns (nan == nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        bits = lambda t: t.reshape(-1).view(torch.uint8)  # bitwise, so nan payloads count too
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def roundtrip(tmp_path, tree):
    sf.save_tree(tmp_path, "part", tree)
    return sf.load_tree(tmp_path, "part")


def trained_adam(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.5, 0.99))
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    return net, opt


def test_mixed_tree_roundtrips_exactly(tmp_path):
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]
    tree = {
        "tensors": {str(d): (torch.randn(3, 5) * 100).to(d) for d in dtypes},
        "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.empty(0, 7), "nan_t": torch.tensor([math.nan]),
        "ints": {0: "zero", 7: [1, 2], -3: None}, "tuple": (1, (2.0, "x"), []), "flags": [True, False, None],
        "floats": [math.nan, math.inf, -math.inf, -0.0, 1e-310, 0.1], "big": 2**80,
        "np": [np.arange(6, dtype=np.uint32).reshape(2, 3), np.float16(1.5) * np.ones(2, np.float16),
               np.array(3.25), np.zeros((0, 2), np.int8), np.array([1, 2], dtype=">i4")],
        "np_scalars": [np.float32(0.5), np.int64(9), np.bool_(True)],
        "odd keys": {"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}},
    }
    back = roundtrip(tmp_path, tree)
    expected = dict(tree, np_scalars=[0.5, 9, True])
    assert same(back, expected)
    assert isinstance(back["ints"], dict) and list(back["ints"]) == [0, 7, -3]
    assert not np.shares_memory(back["np"][0], tree["np"][0]) and back["np"][0].flags.writeable


def test_module_keys_are_tree_paths_and_shared_storage_is_fine(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    w = net[0].weight
    tree = {"model": {"G": net.state_dict()}, "tied": w, "view": w[1], "t": w.t()}
    paths = sf.save_tree(tmp_path, "model", tree)
    assert [p.name for p in paths] == ["model.safetensors", "model.json"]
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert {"model.G.0.weight", "model.G.1.running_mean", "tied", "view"} <= set(f.keys())
    back = sf.load_tree(tmp_path, "model")
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    fresh.load_state_dict(back["model"]["G"])
    assert same(back["t"], w.t().contiguous().detach()) and same(back["view"], w[1].detach())


def test_adam_state_resumes_bit_for_bit(tmp_path):
    net, opt = trained_adam()
    sf.save_tree(tmp_path, "optim", {"net": net.state_dict(), "G": opt.state_dict()})
    back = sf.load_tree(tmp_path, "optim")
    assert back["G"]["param_groups"][0]["betas"] == (0.5, 0.99) and set(back["G"]["state"]) == {0, 1}
    net2 = torch.nn.Linear(4, 3)
    net2.load_state_dict(back["net"])
    opt2 = torch.optim.Adam(net2.parameters(), lr=1.0)
    opt2.load_state_dict(back["G"])
    x = torch.randn(5, 4)
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [{1, 2}, object(), 1j, {(1, 2): 3}, torch.ones(2).to_sparse()])
def test_unsupported_types_name_the_path(tmp_path, bad):
    with pytest.raises(TypeError, match=r"at a\.1\.b"):
        sf.save_tree(tmp_path, "x", {"a": [0, {"b": bad}]})
    assert not list(tmp_path.iterdir())  # nothing half-written


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", ["json", "safetensors"])
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickles_are_refused_without_running(tmp_path, suffix, how):
    sf.save_tree(tmp_path, "state", {"w": torch.ones(2)})
    marker, target = tmp_path / "pwned", tmp_path / f"state.{suffix}"
    if how == "pickle":
        target.write_bytes(pickle.dumps({"w": Evil(marker)}))
    else:
        torch.save({"w": torch.ones(2), "evil": Evil(marker)}, target)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=f"state.{suffix}") as info:
        sf.load_tree(tmp_path, "state")
    assert "\n" not in str(info.value) and not marker.exists()


def _cut(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@pytest.mark.parametrize("suffix,damage", [
    ("safetensors", _cut), ("safetensors", lambda p: p.write_bytes(os.urandom(999))), ("safetensors", os.remove),
    ("json", _cut), ("json", os.remove), ("json", lambda p: p.write_bytes(b"\xff\xfe garbage")),
    ("json", lambda p: p.write_text(p.read_text().replace('"key":"w"', '"key":"nope"'))),
    ("json", lambda p: p.write_text(p.read_text().replace('"t":"tuple"', '"t":"__reduce__"'))),
    ("json", lambda p: p.write_text(p.read_text().replace('"ganforge-tree-1"', '"other"'))),
    ("json", lambda p: p.write_text(p.read_text().replace('"key":"w"', '"key":"w","t":"ndarray"'))),
    ("json", lambda p: p.write_text('{"format":"ganforge-tree-1","tree":' + "[" * 100000 + "]" * 100000 + "}")),
])
def test_malformed_parts_are_one_line_errors(tmp_path, suffix, damage):
    sf.save_tree(tmp_path, "state", {"w": torch.ones(2), "v": (1, 2)})
    damage(tmp_path / f"state.{suffix}")
    with pytest.raises(CheckpointError) as info:
        sf.load_tree(tmp_path, "state")
    msg = str(info.value)
    assert "\n" not in msg and f"state.{suffix}" in msg


def test_unreferenced_tensor_means_mixed_saves(tmp_path):
    sf.save_tree(tmp_path, "a", {"w": torch.ones(2), "extra": torch.zeros(1)})
    sf.save_tree(tmp_path, "b", {"w": torch.ones(2)})
    (tmp_path / "b.json").replace(tmp_path / "a.json")
    with pytest.raises(CheckpointError, match="a.safetensors: tensor 'extra' is not referenced"):
        sf.load_tree(tmp_path, "a")


def make_checkpoint(d, step=5):
    d.mkdir(parents=True)
    sf.save_tree(d, "model", {"w": torch.randn(64, 64)})
    (d / "sub").mkdir()
    (d / "sub" / "note.txt").write_text("hello")
    sf.write_manifest(d, {"step": step, "world_size": 1})
    return d


def _flip(p):
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,expected", [
    (lambda d: _cut(d / "model.safetensors"), "model.safetensors: size"),
    (lambda d: _flip(d / "model.safetensors"), "model.safetensors: sha256"),
    (lambda d: os.remove(d / "sub" / "note.txt"), "sub/note.txt missing"),
    (lambda d: (d / "sub" / "evil.pkl").write_bytes(b"x"), "sub/evil.pkl: not listed"),
    (lambda d: os.remove(d / "manifest.json"), "manifest.json missing"),
    (lambda d: (d / "manifest.json").write_bytes(os.urandom(64)), "manifest.json: not valid JSON"),
    (lambda d: (d / "manifest.json").write_text('{"format": "v0"}'), "manifest.json: format"),
    (lambda d: (d / "manifest.json").write_text(json.dumps(
        {"format": sf.FORMAT, "meta": {}, "files": {"../x": {"size": 1, "sha256": "0" * 64}}})), "escapes"),
])
def test_verify_names_the_first_bad_file(tmp_path, damage, expected):
    d = make_checkpoint(tmp_path / "step-5")
    assert sf.verify(d) is None
    manifest = sf.read_manifest(d)
    assert manifest["format"] == sf.FORMAT and manifest["meta"]["step"] == 5
    assert set(manifest["files"]) == {"model.safetensors", "model.json", "sub/note.txt"}
    damage(d)
    reason = sf.verify(d)
    assert reason is not None and expected in reason and "\n" not in reason


def test_read_manifest_errors_name_the_directory(tmp_path):
    d = make_checkpoint(tmp_path / "c")
    (d / sf.MANIFEST).write_text("{")
    with pytest.raises(CheckpointError, match=r"c: manifest.json: not valid JSON"):
        sf.read_manifest(d)


def test_newest_verified_skips_corrupt_newer(tmp_path):
    dirs = [make_checkpoint(tmp_path / f"step-{i}", i) for i in (1, 2, 3)]
    _flip(dirs[2] / "model.json")
    best, skipped = sf.newest_verified(dirs)
    assert best == dirs[1] and [d for d, _ in skipped] == [dirs[2]] and "model.json" in skipped[0][1]
    for d in dirs:
        os.remove(d / sf.MANIFEST)
    assert sf.newest_verified(dirs) == (None, [(d, "manifest.json missing") for d in reversed(dirs)])


def draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn(), random.gauss(0, 1)


def test_rng_capture_restore(tmp_path):
    random.gauss(0, 1)
    np.random.randn()  # leave a cached gaussian in both generators
    state = sf.capture_rng()
    sf.save_tree(tmp_path, "rng", state)
    expected = draws()
    sf.restore_rng(sf.load_tree(tmp_path, "rng"))
    assert draws() == expected


@pytest.mark.parametrize("breakage", [
    lambda s: s.pop("numpy"), lambda s: s.update(python=list(s["python"])),
    lambda s: s.update(torch=s["torch"][:10]), lambda s: s.update(numpy=s["numpy"][:4]),
    lambda s: s.update(cuda=["x"]), lambda s: s.update(python=(3, (1,) * 624 + (9999,), None)),
])
def test_restore_rng_rejects_malformed_state(breakage):
    state = sf.capture_rng()
    breakage(state)
    before = sf.capture_rng()
    with pytest.raises(CheckpointError, match="malformed RNG state") as info:
        sf.restore_rng(state)
    assert "\n" not in str(info.value)
    sf.restore_rng(before)


def test_first_non_finite_finds_optimizer_nan():
    net, opt = trained_adam()
    tree = {"model": net.state_dict(), "optim": {"G": opt.state_dict()}, "lr": 0.1, "ints": torch.arange(3)}
    assert sf.first_non_finite(tree) is None
    opt.state_dict()["state"][1]["exp_avg_sq"][0] = math.nan
    assert sf.first_non_finite({"optim": {"G": opt.state_dict()}}) == "optim.G.state.1.exp_avg_sq"
    assert sf.first_non_finite([1.0, {"x": np.array([0, np.inf])}]) == "1.x"
    assert sf.first_non_finite((math.inf,), prefix="ema") == "ema.0"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_is_a_one_line_error(tmp_path):
    (tmp_path / "state.json").symlink_to("/dev/full")  # a real ENOSPC, not a mock
    with pytest.raises(CheckpointError, match=r"cannot write .*state\.json: ENOSPC \(No space left on device\)"):
        sf.save_tree(tmp_path, "state", {"w": torch.ones(1000)})


def test_manifest_write_error_is_mapped(tmp_path, monkeypatch):
    d = make_checkpoint(tmp_path / "c")

    def full(path, mode="r", *args, **kwargs):  # reading (hashing) works, writing hits a full disk
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return builtins.open(path, mode, *args, **kwargs)
    monkeypatch.setattr(sf, "open", full, raising=False)  # shadows the builtin inside statefile only
    with pytest.raises(CheckpointError) as info:
        sf.write_manifest(d, {})
    assert str(info.value) == f"cannot write {d / '.manifest.json.tmp'}: ENOSPC (No space left on device)"
    assert not (d / sf.MANIFEST).exists() or sf.verify(d) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="EACCES"):
            sf.save_tree(tmp_path, "state", {"w": torch.ones(1)})
    finally:
        tmp_path.chmod(0o700)
