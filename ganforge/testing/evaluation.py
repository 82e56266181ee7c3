"""Contracts of the evaluation kinds: ``metric`` and ``extractor``."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ._common import build, checking, options, temp_dir


def check_metric(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """``compute(fake, real)`` returns a non-empty dict of named floats (no NaN) and is a pure function of its
    inputs. The inputs come from the metric's ``contract_inputs() -> (fake, real)`` (e.g. 2D points, or features)
    or are small random images ``[16, 3, 16, 16]`` in [-1, 1]. Returns the built metric."""
    with checking("metric", name) as entry:
        metric = build(entry, options(entry, opts))
        if hasattr(metric, "contract_inputs"):
            fake, real = metric.contract_inputs()
        else:
            g = torch.Generator().manual_seed(0)
            fake, real = (torch.rand(16, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2))
        out = metric.compute(fake, real)
        assert isinstance(out, dict) and out, "compute() must return a non-empty dict of named numbers"
        assert all(isinstance(k, str) and isinstance(v, float) and not math.isnan(v) for k, v in out.items()), \
            f"compute() must return {{str: float}} without NaN, got {out}"
        assert metric.compute(fake, real) == out, "a metric must be a pure function of its inputs"
        return metric


def check_extractor(name: str, /, *, tmp_path: str | Path | None = None, **opts):
    """Images ``[B, 1|3, H, W]`` in [-1, 1] at any size -> ``{"features": [B, D]}`` (+ ``"logits"`` exactly when
    ``has_logits``), finite, deterministic, the same for a grey image and its RGB copy, independent of the rest
    of the batch; non-empty ``name`` and ``checksum``; ``to(device)`` returns the extractor.

    Options: ``contract_options`` (a dict), or ``contract_setup(tmp_path) -> dict`` for an extractor that needs a
    file (e.g. a tiny pinned network with the real one's interface); ``opts`` go on top. Returns the extractor."""
    with checking("extractor", name) as entry, temp_dir(tmp_path) as tmp:
        setup = getattr(entry.obj, "contract_setup", None)
        base = setup(tmp) if setup is not None else options(entry, {})
        ex = build(entry, {**base, **opts})
        assert isinstance(ex.name, str) and ex.name, f"name must be a non-empty string, got {ex.name!r}"
        assert isinstance(ex.checksum, str) and ex.checksum, f"checksum must be a non-empty string: {ex.checksum!r}"
        assert ex.to("cpu") is ex, "to(device) must return the extractor itself"
        g = torch.Generator().manual_seed(0)
        grey, rgb = torch.rand(5, 1, 16, 16, generator=g) * 2 - 1, torch.rand(5, 3, 24, 24, generator=g) * 2 - 1
        a, b = ex(grey), ex(rgb)
        for out in (a, b):
            f = out["features"]
            assert f.dim() == 2 and f.shape[0] == 5 and torch.isfinite(f).all(), \
                f"features must be finite [B, D]; got {tuple(f.shape)}"
            assert ("logits" in out) == ex.has_logits, "'logits' must be returned exactly when has_logits is True"
            if ex.has_logits:
                assert out["logits"].shape[0] == 5 and torch.isfinite(out["logits"]).all(), "logits: finite [B, K]"
        assert a["features"].shape[1] == b["features"].shape[1], "feature size must not depend on the input size"
        assert torch.equal(ex(grey)["features"], a["features"]), "an extractor must be deterministic"
        # a grey image and its RGB copy are the same picture
        assert torch.allclose(ex(grey.expand(-1, 3, -1, -1))["features"], a["features"], atol=1e-5), \
            "a grey image and its RGB copy must give the same features"
        # one image's features do not depend on the rest of its batch (eval mode: no batch statistics)
        alone = ex(rgb[:1])["features"][0]
        assert math.isclose(float((alone - b["features"][0]).abs().max()), 0.0, abs_tol=1e-4), \
            "an image's features must not depend on the rest of its batch (eval mode)"
        return ex
