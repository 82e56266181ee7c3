"""Evaluation: features of generated and real images through one extractor, then metric plugins on them.

One evaluation: every rank generates its share of ``n`` samples (sample ``i`` goes to rank ``i % W``, from latents
drawn once for all ``n``, so the set does not depend on the number of processes) and extracts their features;
reals are read exactly once through the epoch stream (each shard by one rank) unless their features are cached.
The ranks' features are gathered once, the main process runs the metric plugins and broadcasts the numbers.
Metric and extractor plugins never see the Accelerator.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from urllib.parse import urlparse

import torch

from .. import registry
from ..errors import GanforgeError
from ..metrics_config import MetricsConfig
from .feature_cache import load_cached, save_cached


def _gather_rows(acc, x: torch.Tensor) -> list[torch.Tensor] | None:
    """Each rank's ``[N_r, D]`` rows (N_r may differ) -> the list of all ranks' rows on the main process. One
    padded all-gather instead of a collective per batch: ranks reach this point with uneven amounts of work."""
    if acc.num_processes == 1:
        return [x]
    x = x.to(acc.device)
    counts = acc.gather(torch.tensor([len(x)], device=acc.device)).tolist()
    padded = torch.zeros(max(counts), *x.shape[1:], dtype=x.dtype, device=acc.device)
    padded[: len(x)] = x
    rows = acc.gather(padded[None])  # [W, max, D]: a new leading dim, so each rank's block stays separate
    return [rows[r, :c].cpu() for r, c in enumerate(counts)] if acc.is_main_process else None


def _source_identity(urls: list[str]) -> list:
    """What the real set is: URLs, plus size and mtime of local files (a repacked dataset gets new features)."""
    out = []
    for u in urls:
        p = Path(urlparse(u).path if u.startswith("file:") else u)
        st = p.stat() if p.is_file() else None
        out.append([u, st.st_size, st.st_mtime_ns] if st else [u])
    return out


def _canonical_order(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Real rows sorted by their projection on a fixed random direction. Which rank reads which shard changes
    the order rows arrive in; KID's random subsets depend on that order. Sorted, the same reals give the same
    numbers with 1 or N processes."""
    if not feats:
        return feats
    f = feats["features"].double()
    w = torch.randn(f.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    order = torch.argsort(f @ w, stable=True)
    return {k: v[order] for k, v in feats.items()}


def _kinds(metric) -> tuple[str, ...]:
    """What a metric scores: ``input`` is one kind ("features", "logits") or a tuple of them."""
    need = getattr(metric, "input", "features")
    return tuple(need) if isinstance(need, (tuple, list)) else (need,)


class Evaluator:
    """Metrics on the features of one or more extractors: ``metrics.extractor`` by default, or the one a metric
    brings (``metric.extractor``, a plugin block: class coverage scores with a classifier of its own). Each
    extractor is built once and sees every image once; the fakes are rendered once for all of them."""

    def __init__(self, cfg: MetricsConfig, arch, runs_dir: str | Path):
        self.cfg, self.arch = cfg, arch
        self.metrics = [registry.build("metric", b, f"metrics.compute[{i}]") for i, b in enumerate(cfg.compute)]
        blocks: dict[str, int] = {}  # canonical block -> index in self.extractors
        self.extractors, self.uses = [], []
        for i, m in enumerate(self.metrics):
            own = getattr(m, "extractor", None)
            block = dict(own) if own else cfg.extractor
            key = json.dumps(block, sort_keys=True, default=str)
            if key not in blocks:  # built now: missing weights are refused before any heavy work
                blocks[key] = len(self.extractors)
                where = f"metrics.compute[{i}].extractor" if own else "metrics.extractor"
                self.extractors.append(registry.build("extractor", block, where))
            ex = self.extractors[blocks[key]]
            self.uses.append(blocks[key])
            for need in _kinds(m):
                name = cfg.compute[i]["type"]
                if need == "logits" and not ex.has_logits:
                    raise GanforgeError(f"metrics.compute[{i}]: {name!r} needs class logits; extractor "
                                        f"{ex.name!r} gives features only")
                if need not in ("features", "logits"):
                    raise GanforgeError(f"metrics.compute[{i}]: {name!r} scores {need}, not images")
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(runs_dir) / ".cache" / "features"

    def higher_is_better(self, key: str) -> bool:
        return any(key in getattr(m, "higher_is_better", ()) for m in self.metrics)

    def known_keys(self) -> set[str] | None:
        keys = [getattr(m, "keys", None) for m in self.metrics]
        return None if any(k is None for k in keys) else {k for ks in keys for k in ks}

    # ---- features ------------------------------------------------------------------------------------------
    def _extract(self, images: torch.Tensor, out: dict[tuple, list], which: list[int]) -> None:
        with torch.no_grad():
            for j in which:
                for k, v in self.extractors[j](images).items():
                    out.setdefault((j, k), []).append(v.detach().float().cpu())

    def fake_features(self, acc, render) -> dict[tuple, torch.Tensor] | None:
        """``render(z) -> images [B, C, H, W]`` in [-1, 1]. Rank r renders samples r, r + W, ...; the main process
        gets ``{(extractor index, kind): [n, D]}`` back in sample order (None elsewhere)."""
        cfg, W, r = self.cfg, acc.num_processes, acc.process_index
        z_all = self.arch.sample_latents(cfg.n, generator=torch.Generator().manual_seed(cfg.seed))
        mine = z_all[r::W]
        out: dict[tuple, list] = {}
        devices = [acc.device] if acc.device.type == "cuda" else []
        # Forked RNG: noise inputs (StyleGAN) are seeded per rank, and training's random stream after an
        # evaluation is the one it would have had without it (exact resume does not depend on evaluation).
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed + 1 + r)
            for i in range(0, len(mine), cfg.batch):
                self._extract(render(mine[i:i + cfg.batch].to(acc.device)), out, list(range(len(self.extractors))))
        result = {}
        for k in sorted(out):  # same key order on every rank: each key is one collective
            parts = _gather_rows(acc, torch.cat(out[k]))
            if parts is not None:
                full = torch.empty(cfg.n, *parts[0].shape[1:])
                for rank, p in enumerate(parts):
                    full[rank::W] = p  # back to sample order
                result[k] = full
        return result if acc.is_main_process else None

    def _cache_path(self, j: int, ident: dict) -> tuple[Path, dict]:
        ex = self.extractors[j]
        ident = ident | {"extractor": ex.name, "checksum": ex.checksum}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"{ex.name.replace(':', '_')}-{ident['resolution']}px-{key}.safetensors", ident

    def real_features(self, acc, source, resolution: int, channels: int, log=print) -> dict | None:
        """``{(extractor index, kind): features}`` of the reals at ``resolution`` on the main process (None
        elsewhere): from the cache where an entry for (dataset, extractor, resolution, count) exists; the reals
        are read once, for every extractor without one, and cached."""
        from ..datatools.epoch import EpochStream
        from ..stream import make_loader

        cfg = self.cfg
        urls = source.urls()
        # with a subset (reals: N), which N images depend on how shards fall to ranks: part of the key
        world = acc.num_processes if cfg.reals is not None else None
        base = {"source": _source_identity(urls), "resolution": resolution, "channels": channels,
                "reals": cfg.reals, "world": world}
        paths = [self._cache_path(j, base) for j in range(len(self.extractors))]
        found = torch.tensor([float(acc.is_main_process and p.is_file()) for p, _ in paths], device=acc.device)
        found = acc.reduce(found, reduction="sum").tolist()  # the main process decides for every rank
        result: dict[tuple, torch.Tensor] = {}
        if acc.is_main_process:
            for j, (p, _) in enumerate(paths):
                if found[j] > 0:
                    result |= {(j, k): v for k, v in load_cached(p).items()}
        todo = [j for j in range(len(self.extractors)) if found[j] == 0]
        if not todo:
            return result if acc.is_main_process else None
        t0 = time.perf_counter()
        stream = EpochStream(urls, batch_size=cfg.batch, resolution=resolution, channels=channels,
                             rank=acc.process_index, world_size=acc.num_processes, num_workers=0)
        quota = None if cfg.reals is None else -(-cfg.reals // acc.num_processes)
        out: dict[tuple, list] = {}
        seen = 0
        for batch in make_loader(stream):
            images = batch["image"] if quota is None else batch["image"][: quota - seen]
            self._extract(images.to(acc.device), out, todo)
            seen += len(images)
            if quota is not None and seen >= quota:
                break
        fresh: dict[tuple, torch.Tensor] = {}
        for k in sorted(out):
            parts = _gather_rows(acc, torch.cat(out[k]))
            if parts is not None:
                fresh[k] = torch.cat(parts)[: cfg.reals]
        if not acc.is_main_process:
            return None
        for j in todo:
            feats = _canonical_order({k: v for (i, k), v in fresh.items() if i == j})
            have = len(feats["features"])
            if cfg.reals is not None and have < cfg.reals:
                raise GanforgeError(f"metrics.reals: {cfg.reals} asked for, the dataset gave {have} readable images")
            save_cached(paths[j][0], feats, paths[j][1])
            log(f"metrics: features of {have} real images ({self.extractors[j].name}) in "
                f"{time.perf_counter() - t0:.0f} s, cached at {paths[j][0]}")
            result |= {(j, k): v for k, v in feats.items()}
        return result

    # ---- metrics ---------------------------------------------------------------------------------------------
    def prepare(self, acc, source, resolution: int, channels: int, log=print) -> None:
        """Extractors that fit themselves to the data (a classifier) do it now: the main process first, so it
        trains and caches while the other ranks wait, then they load its file."""
        from ..api import ExtractorData

        urls = source.urls()
        if not urls:
            raise GanforgeError(f"metrics: data.source {type(source).__name__} has no image shards to compare with")
        data = ExtractorData(urls, resolution, channels, self.cache_dir, log)
        for ex in self.extractors:
            if hasattr(ex, "prepare"):
                # acc None: one process outside any run (the lab prepares once before its workers start)
                with acc.main_process_first() if acc is not None else contextlib.nullcontext():
                    ex.prepare(data)
            if acc is not None:
                ex.to(acc.device)

    def evaluate(self, acc, render, source, resolution: int, channels: int, log=print) -> dict:
        """Every rank calls this; every rank gets the same result dict (numbers plus what produced them)."""
        from accelerate.utils import broadcast_object_list

        t0 = time.perf_counter()
        self.prepare(acc, source, resolution, channels, log)
        real = self.real_features(acc, source, resolution, channels, log)
        fake = self.fake_features(acc, render)
        box = [None]
        if acc.is_main_process:
            res: dict = {}
            for m, j in zip(self.metrics, self.uses):
                kinds = _kinds(m)
                if isinstance(getattr(m, "input", "features"), str):
                    res |= m.compute(fake[(j, kinds[0])], real[(j, kinds[0])])
                else:  # several kinds: the metric takes {kind: tensor}
                    res |= m.compute({k: fake[(j, k)] for k in kinds}, {k: real[(j, k)] for k in kinds})
            names = [ex.name for ex in self.extractors]
            sums = [ex.checksum for ex in self.extractors]
            one = len(names) == 1
            res |= {"n": self.cfg.n, "reals": len(real[(0, "features")]),
                    "extractor": names[0] if one else names, "checksum": sums[0] if one else sums,
                    "seconds": round(time.perf_counter() - t0, 1)}
            box = [res]
        if acc.num_processes > 1:
            broadcast_object_list(box)  # every rank decides the same about the best checkpoint
        return box[0]
