"""``classifier``: a small CNN trained once on the evaluated dataset's own labelled reals — features and class
logits that need no downloaded weights.

Why a network of our own: on 32² digits Inception (at 299², trained on photos) mostly measures pixel noise (see
docs/evaluation.md), and no wheel ships a digit classifier. Shards that carry ``cls`` (webdataset's label
convention; the embedded digits do) are enough to train one in about a minute on a CPU. Training is deterministic
(seeded, one process), so the same data gives the same file; it is cached next to the data (or in the evaluation
cache when that directory is not writable), keyed on the shards, the options and ``VERSION``. Every tenth real
(in reading order) is held out; the held-out accuracy is printed, stored in the file and checked against
``min_accuracy``, because a metric built on a classifier that cannot tell the classes apart means nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.api import Extractor, ExtractorData
from ganforge.errors import PluginError
from ganforge.registry import register

from .common import rgb01, sha256_of

VERSION = 1  # bump when the network or its training changes: part of the cache key


def _net(classes: int, width: int) -> nn.Sequential:
    """Three conv stages (32 -> 16 -> 8 -> pooled) and a linear head; the pooled ``4 * width`` vector is the
    feature. No batch norm: an image's features must not depend on its batch, and training stays simple."""
    w = width

    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU()]

    return nn.Sequential(*stage(3, w), nn.MaxPool2d(2), *stage(w, 2 * w), nn.MaxPool2d(2),
                         nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, classes))


def _read_labelled(urls: list[str], size: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` labelled reals ``[N, 3, size, size]`` in [-1, 1] with their classes, in shard order (one
    reader). Held in memory: 50k images at 32² are 600 MB of float32."""
    from ganforge.datatools.epoch import EpochStream
    from ganforge.stream import make_loader

    images, labels = [], []
    for batch in make_loader(EpochStream(urls, batch_size=512, resolution=size, channels=3)):
        keep = batch["label"] >= 0
        images.append(batch["image"][keep])
        labels.append(batch["label"][keep])
        if sum(len(y) for y in labels) >= limit:
            break
    if not images or sum(len(y) for y in labels) == 0:
        raise PluginError(f"extractor 'classifier': the reals ({urls[0]}{' ...' if len(urls) > 1 else ''}) carry "
                          "no class labels ('cls' in each sample); it needs labelled data")
    return torch.cat(images)[:limit], torch.cat(labels)[:limit]


@register("extractor", "classifier")
class DataClassifier(Extractor):
    """A CNN trained on the dataset's labelled reals (``cls``): pooled features (``4 * width``-d) and class logits.
    Trained on the first evaluation and cached; ``weights`` loads a file it wrote; ``random_init`` for tests."""

    has_logits = True
    name = "classifier"
    contract_options = {"random_init": True, "classes": 10, "width": 4}

    def __init__(self, size: int = 32, width: int = 16, steps: int = 600, batch: int = 128, lr: float = 5e-3,
                 seed: int = 0, min_accuracy: float = 0.95, max_images: int = 50000, classes: int | None = None,
                 weights: str | None = None, random_init: bool = False):
        for key, v, lo in (("size", size, 8), ("width", width, 1), ("steps", steps, 1), ("batch", batch, 2),
                           ("max_images", max_images, 20)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")
        if not 0 <= min_accuracy <= 1:
            raise ValueError(f"min_accuracy must be in [0, 1], got {min_accuracy}")
        if random_init and classes is None:
            raise ValueError("random_init needs classes (the number of logits)")
        self.opts = {"size": size, "width": width, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                     "max_images": max_images}
        self.min_accuracy = min_accuracy
        self.net: nn.Sequential | None = None
        self.accuracy: float | None = None
        self.checksum = "unfitted"  # final after prepare()
        if random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = _net(classes, width).eval()
            self.checksum = f"random-init:seed{seed}"
        elif weights is not None:
            self._load(Path(weights).expanduser())

    # ---- fitting -----------------------------------------------------------------------------------------------
    def prepare(self, data: ExtractorData) -> None:
        if self.net is not None:  # weights given, random_init, or already prepared for this evaluation
            return
        path = self._cache_path(data)
        if path.is_file():
            self._load(path)
            return
        t0 = time.perf_counter()
        x, y = _read_labelled(data.urls, self.opts["size"], self.opts["max_images"])
        self.net, self.accuracy = self._train(x, y)
        self._save(path, int(y.max()) + 1, len(y))
        data.log(f"metrics: classifier trained on {len(y) - len(y[::10])} labelled reals in "
                 f"{time.perf_counter() - t0:.0f} s, held-out accuracy {100 * self.accuracy:.2f}% "
                 f"({len(y[::10])} images), cached at {path}")
        self._check_accuracy(path)

    def _cache_path(self, data: ExtractorData) -> Path:
        ident = []
        for u in data.urls:  # size and mtime of local shards: a repacked dataset gets a new classifier
            p = Path(u)
            ident.append([u, p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [u])
        key = hashlib.sha256(json.dumps([ident, self.opts, VERSION]).encode()).hexdigest()[:20]
        first = Path(data.urls[0])
        beside = first.parent / ".ganforge"
        # next to the data when it is a local, writable directory: every run and the lab on it share one file
        if first.is_file() and (beside.is_dir() or _writable(first.parent)):
            return beside / f"classifier-{key}.safetensors"
        return Path(data.cache_dir) / f"classifier-{key}.safetensors"

    def _train(self, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Sequential, float]:
        o = self.opts
        held = torch.zeros(len(y), dtype=torch.bool)
        held[::10] = True  # every tenth real, in reading order: a fixed, class-balanced-on-average split
        xt, yt = x[~held], y[~held]
        with torch.random.fork_rng(devices=[]):  # training must not shift the caller's random stream
            torch.manual_seed(o["seed"])
            net = _net(int(y.max()) + 1, o["width"])
            opt = torch.optim.Adam(net.parameters(), lr=o["lr"])
            # A fixed number of steps, not epochs: the same cost (about half a minute on 2 CPU cores) and the same
            # schedule whatever the dataset size; 600 x 128 images reach ~99% on the embedded digits.
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, o["lr"], total_steps=o["steps"])
            g = torch.Generator().manual_seed(o["seed"])
            order = torch.empty(0, dtype=torch.int64)
            for _ in range(o["steps"]):
                if len(order) < o["batch"]:  # a new pass over the shuffled training reals
                    order = torch.cat([order, torch.randperm(len(yt), generator=g)])
                idx, order = order[:o["batch"]], order[o["batch"]:]
                # +-2 px shifts: generated digits are not centred exactly like the renders
                dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
                loss = F.cross_entropy(net(torch.roll(xt[idx], (dy, dx), (2, 3))), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(x[held][i:i + 512]).argmax(1) for i in range(0, int(held.sum()), 512)])
        return net, float((pred == y[held]).double().mean())

    def _check_accuracy(self, path: Path) -> None:
        if self.accuracy is not None and self.accuracy < self.min_accuracy:
            raise PluginError(f"extractor 'classifier': held-out accuracy {100 * self.accuracy:.1f}% is below "
                              f"min_accuracy {100 * self.min_accuracy:.0f}% ({path}); its class statistics would "
                              "mean little: raise steps/width, or check the labels")

    # ---- file --------------------------------------------------------------------------------------------------
    def _save(self, path: Path, classes: int, count: int) -> None:
        from safetensors.torch import save

        from ganforge.errors import GanforgeError
        from ganforge.fileio import write_atomic

        meta = {"classes": str(classes), "accuracy": repr(self.accuracy), "count": str(count),
                "opts": json.dumps(self.opts), "version": str(VERSION)}
        blob = save({k: v.contiguous() for k, v in self.net.state_dict().items()}, metadata=meta)
        try:
            write_atomic(path, lambda f: f.write(blob))
            self.checksum = sha256_of(path)
        except GanforgeError as e:  # not cached: the next evaluation trains again, nothing else is lost
            print(f"warning: classifier not cached: {e}")
            self.checksum = hashlib.sha256(blob).hexdigest()

    def _load(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
            opts = json.loads(meta["opts"])
            net = _net(int(meta["classes"]), int(opts["width"]))
            net.load_state_dict(sd)
        except (OSError, SafetensorError, KeyError, ValueError, RuntimeError) as e:
            raise PluginError(f"extractor 'classifier': cannot load {path} ({' '.join(str(e).split())[:160]}); "
                              "delete it to train again") from None
        self.opts["size"] = int(opts["size"])
        self.net, self.accuracy = net.eval(), float(meta["accuracy"])
        self.checksum = sha256_of(path)
        self._check_accuracy(path)

    # ---- features ----------------------------------------------------------------------------------------------
    def to(self, device) -> DataClassifier:
        if self.net is not None:
            self.net.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.net is None:
            raise PluginError("extractor 'classifier': not trained yet (the evaluator calls prepare() first)")
        x = rgb01(images) * 2 - 1  # the [-1, 1] range the reals were trained in, grey as RGB
        s = self.opts["size"]
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        x = x.to(next(self.net.parameters()).device)
        h = self.net[:-1](x)  # everything but the head: the pooled features
        return {"features": h, "logits": self.net[-1](h)}


def _writable(d: Path) -> bool:
    import os

    return os.access(d, os.W_OK)
