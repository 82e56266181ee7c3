"""Metric math against float64 references written here (and against closed forms where one exists)."""

import numpy as np
import pytest
import torch

from ganforge import registry


def metric(name, **opts):
    return registry.build("metric", {"type": name, **opts})


def ref_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID through the symmetric form Tr((S1^1/2 S2 S1^1/2)^1/2), every step a symmetric eigendecomposition."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def ref_mmd2(x: np.ndarray, y: np.ndarray, degree=3, coef0=1.0) -> float:
    """Unbiased MMD^2 with k(a, b) = (<a, b> / D + coef0)^degree: KID on one subset holding every sample."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + coef0) ** degree for a, b in ((x, x), (y, y), (x, y)))
    m = len(x)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def ref_pr(fake: np.ndarray, real: np.ndarray, k=3) -> tuple[float, float]:
    def radii(s):
        d = np.sqrt(((s[:, None] - s[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the sample itself

    def inside(a, s):
        d = np.sqrt(((a[:, None] - s[None]) ** 2).sum(-1))
        return float((d <= radii(s)[None]).any(1).mean())

    return inside(fake, real), inside(real, fake)


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("n,d", [(500, 16), (300, 64), (2000, 8)])
def test_fid_matches_float64_reference(n, d):
    g = rng(n)
    x = g.normal(size=(n, d)) @ g.normal(size=(d, d))
    y = g.normal(size=(n, d)) * 1.3 + 0.2
    got = metric("fid").compute(torch.tensor(x, dtype=torch.float32), torch.tensor(y))["fid"]
    # float32 input: the reference sees the same rounded numbers
    want = ref_fid(x.astype(np.float32).astype(np.float64), y)
    assert abs(got - want) / want < 1e-6, (got, want)


@pytest.mark.parametrize("n,d,rank", [(40, 64, 64), (500, 64, 5), (100, 32, 31)])
def test_fid_of_near_singular_covariances_against_closed_forms(n, d, rank):
    """Singular covariances (fewer samples than dimensions; features in a subspace): shifting a set by c gives
    FID = |c|^2, scaling it by s gives (s - 1)^2 (|mu|^2 + Tr S), exactly."""
    g = rng(rank)
    x = (g.normal(size=(n, rank)) @ g.normal(size=(rank, d))) + g.normal(size=d)
    c = g.normal(size=d) * 0.1
    fid = metric("fid")
    got = fid.compute(torch.tensor(x + c), torch.tensor(x))["fid"]
    assert abs(got - c @ c) / (c @ c) < 1e-6, (got, c @ c)
    s = 1.5
    want = (s - 1) ** 2 * (x.mean(0) @ x.mean(0) + np.trace(np.cov(x, rowvar=False)))
    got = fid.compute(torch.tensor(x * s), torch.tensor(x))["fid"]
    assert abs(got - want) / want < 1e-6, (got, want)


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.tensor(rng().normal(size=(400, 32)))
    assert abs(metric("fid").compute(x, x)["fid"]) < 1e-9


def test_kid_matches_float64_reference():
    g = rng(1)
    x, y = g.normal(size=(200, 24)), g.normal(size=(200, 24)) * 1.1 + 0.05
    got = metric("kid", subsets=1, subset_size=200).compute(torch.tensor(x), torch.tensor(y))
    want = ref_mmd2(x, y)
    assert abs(got["kid"] - want) / abs(want) < 1e-6, (got, want)
    # two independent draws of one distribution: KID is unbiased, so near 0 (well below the shifted pair's)
    a, b = g.normal(size=(1000, 24)), g.normal(size=(1000, 24))
    same = metric("kid", subsets=50, subset_size=500).compute(torch.tensor(a), torch.tensor(b))
    assert abs(same["kid"]) < 0.3 * want, (same, want)  # seeded: the same draw every run


def test_precision_recall_match_brute_force_reference():
    g = rng(2)
    fake, real = g.normal(size=(150, 8)) + 0.5, g.normal(size=(170, 8))
    got = metric("pr", k=3).compute(torch.tensor(fake), torch.tensor(real))
    want = ref_pr(fake, real, 3)
    # the same counts (torch-fidelity averages in float32: 1e-7 is far below one sample's 1/170)
    assert (got["precision"], got["recall"]) == pytest.approx(want, abs=1e-7)
    assert 0.1 < got["precision"] < 0.95 and 0.1 < got["recall"] < 0.95  # a real overlap, not a degenerate case


def test_precision_recall_on_known_overlaps():
    g = rng(3)
    real = g.normal(size=(200, 4))
    pr = metric("pr", k=3)
    assert pr.compute(torch.tensor(real), torch.tensor(real)) == {"precision": 1.0, "recall": 1.0}
    far = real + 100
    assert pr.compute(torch.tensor(far), torch.tensor(real)) == {"precision": 0.0, "recall": 0.0}
    half = np.concatenate([real[:100], far[:100]])  # half the fakes are reals, half are nowhere near them
    assert pr.compute(torch.tensor(half), torch.tensor(real))["precision"] == 0.5


def test_inception_score_extremes():
    uniform = torch.zeros(100, 10)
    assert metric("is", splits=1).compute(uniform)["is"] == pytest.approx(1.0, abs=1e-9)
    confident = torch.full((100, 10), -50.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 50.0  # every class equally often, each sample sure
    assert metric("is", splits=1).compute(confident)["is"] == pytest.approx(10.0, rel=1e-6)


@pytest.mark.parametrize("name,opts", [("fid", {}), ("kid", {}), ("pr", {"k": 3})])
def test_bad_feature_shapes_name_the_metric(name, opts):
    with pytest.raises(ValueError, match=f"^{name}: "):
        metric(name, **opts).compute(torch.zeros(10, 4), torch.zeros(10, 5))
