"""Contract of kind "metric": ``compute(fake, real=None) -> dict[str, float]``, a pure function of its inputs.

A metric gives the test inputs it can score through ``contract_inputs() -> (fake, real)`` (2D points for mode
coverage; a metric without it gets small random images ``[16, 3, 16, 16]`` in [-1, 1]). Options for the test come
from ``contract_options`` as for every kind."""

import math

import torch


def check_metric(entry, tmp_path):
    metric = entry.obj(**getattr(entry.obj, "contract_options", {}))
    if hasattr(metric, "contract_inputs"):
        fake, real = metric.contract_inputs()
    else:
        g = torch.Generator().manual_seed(0)
        fake, real = (torch.rand(16, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2))
    out = metric.compute(fake, real)
    assert isinstance(out, dict) and out, "compute() must return a non-empty dict of named numbers"
    assert all(isinstance(k, str) and isinstance(v, float) and not math.isnan(v) for k, v in out.items()), out
    assert metric.compute(fake, real) == out, "a metric must be a pure function of its inputs"
