"""Contract of kind "extractor": images ``[B, 1|3, H, W]`` in [-1, 1] at any size -> ``{"features": [B, D]}``
(+ ``"logits"`` when ``has_logits``), deterministic, with a ``name`` and a ``checksum`` to record next to results.

Options for the test: ``contract_options`` (a dict) or ``contract_setup(tmp_path) -> dict`` (for an extractor
that needs a file, e.g. a small pinned TorchScript network with the real one's interface)."""

import math

import torch


def check_extractor(entry, tmp_path):
    setup = getattr(entry.obj, "contract_setup", None)
    opts = setup(tmp_path) if setup is not None else dict(getattr(entry.obj, "contract_options", {}))
    ex = entry.obj(**opts)
    assert isinstance(ex.name, str) and ex.name and isinstance(ex.checksum, str) and ex.checksum
    assert ex.to("cpu") is ex
    g = torch.Generator().manual_seed(0)
    grey, rgb = torch.rand(5, 1, 16, 16, generator=g) * 2 - 1, torch.rand(5, 3, 24, 24, generator=g) * 2 - 1
    a, b = ex(grey), ex(rgb)
    for out in (a, b):
        f = out["features"]
        assert f.dim() == 2 and f.shape[0] == 5 and torch.isfinite(f).all(), f.shape
        assert ("logits" in out) == ex.has_logits
        if ex.has_logits:
            assert out["logits"].shape[0] == 5 and torch.isfinite(out["logits"]).all()
    assert a["features"].shape[1] == b["features"].shape[1], "feature size must not depend on the input size"
    assert torch.equal(ex(grey)["features"], a["features"]), "an extractor must be deterministic"
    # a grey image and its RGB copy are the same picture
    assert torch.allclose(ex(grey.expand(-1, 3, -1, -1))["features"], a["features"], atol=1e-5)
    # one image's features do not depend on the rest of its batch (eval mode: no batch statistics)
    alone = ex(rgb[:1])["features"][0]
    assert math.isclose(float((alone - b["features"][0]).abs().max()), 0.0, abs_tol=1e-4)
