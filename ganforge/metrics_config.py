"""The recipe's ``metrics:`` block: periodic evaluation (FID, KID, precision/recall, IS) during training.

    metrics:
      every_kimg: 10            # or every: <steps>; the final step is evaluated when it falls on the interval
      n: 10000                  # generated samples per evaluation, split across ranks
      reals: null               # real images (null: the whole dataset, read once, features cached on disk)
      extractor: inception_fid  # or timm:vit_small_patch14_dinov2, or a plugin block {type: timm, model: ...}
      compute: [fid, kid, {type: pr, k: 3}]
      best: fid                 # keep the checkpoint with the best value of this result, besides the last K
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass
class MetricsConfig:
    compute: list = field(default_factory=lambda: ["fid"])  # metric names or plugin blocks
    extractor: str | dict = "inception_fid"
    every: int = 0  # steps (0: only every_kimg)
    every_kimg: float | None = None
    n: int = 10000
    reals: int | None = None
    batch: int = 64  # images per forward, per rank
    seed: int = 0  # latents of the evaluated samples: the same images at every evaluation
    best: str | None = None
    cache_dir: str | None = None  # real-feature cache (default: <runs_dir>/.cache/features)


def parse_compute(spec, where: str = "--metrics") -> list:
    """A command line's metrics: 'fid,kid,pr', or a YAML flow list with plugin blocks '[fid, {type: pr, k: 5}]'."""
    if isinstance(spec, list):
        return spec
    if spec.lstrip().startswith("["):
        import yaml

        try:
            blocks = yaml.safe_load(spec)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not a valid YAML list: {' '.join(str(e).split())}") from None
        if not isinstance(blocks, list) or not blocks:
            raise ConfigError(f"{where}: expected a non-empty list like [fid, {{type: pr, k: 5}}]")
        return blocks
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"{where}: name at least one metric (e.g. fid,kid,pr)")
    return names


def parse_extractor(spec, path: str = "metrics.extractor") -> dict:
    """'inception_fid' | 'timm:<model>' | a plugin block -> a plugin block."""
    if isinstance(spec, dict):
        return dict(spec)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{path}: expected an extractor name (inception_fid, timm:<model>) or a block")
    if ":" in spec:
        kind, _, model = spec.partition(":")
        return {"type": kind, "model": model}
    return {"type": spec}


def validate(m: MetricsConfig, check_plugin_block) -> MetricsConfig:
    """Plugin blocks checked against their plugins' signatures (``check_plugin_block`` from config.py)."""
    if m.every < 0 or (m.every == 0 and m.every_kimg is None):
        raise ConfigError(f"metrics.every: must be > 0 (or 0 with metrics.every_kimg set), got {m.every}")
    if m.every_kimg is not None and m.every_kimg <= 0:
        raise ConfigError(f"metrics.every_kimg: must be > 0, got {m.every_kimg}")
    for name in ("n", "batch"):
        if getattr(m, name) < 2:
            raise ConfigError(f"metrics.{name}: must be >= 2, got {getattr(m, name)}")
    if m.reals is not None and m.reals < 2:
        raise ConfigError(f"metrics.reals: must be >= 2 (or null for the whole dataset), got {m.reals}")
    if not m.compute:
        raise ConfigError("metrics.compute: name at least one metric (fid, kid, pr, is)")
    m.compute = [check_plugin_block("metric", {"type": b} if isinstance(b, str) else b, f"metrics.compute[{i}]")
                 for i, b in enumerate(m.compute)]
    m.extractor = check_plugin_block("extractor", parse_extractor(m.extractor), "metrics.extractor")
    if m.best is not None:  # checked now: a typo must not surface at the first evaluation, hours into a run
        from . import registry

        keys = [getattr(registry.get("metric", b["type"]).obj, "keys", None) for b in m.compute]
        if all(k is not None for k in keys) and m.best not in {k for ks in keys for k in ks}:
            results = ", ".join(k for ks in keys for k in ks)
            raise ConfigError(f"metrics.best: {m.best!r} is not a result of metrics.compute (results: {results})")
    return m
