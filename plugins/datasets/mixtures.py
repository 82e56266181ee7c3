"""2D Gaussian mixtures for the mode-collapse lab: the ring of 8 and the 5x5 grid of 25 Gaussians used in the
Unrolled GAN, VEEGAN and PacGAN papers. Samples are generated on the fly (no shards): every batch is a pure
function of ``(seed, rank, batch index)``, so streams differ across ranks and a resumed run continues exactly."""

from __future__ import annotations

import hashlib
import math

import torch

from ganforge.api import DatasetSource
from ganforge.registry import register


def _batch_seed(seed: int, rank: int, index: int, name: str) -> int:
    digest = hashlib.sha256(f"ganforge-mixture-v1:{name}:{seed}:{rank}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Mixture2D(DatasetSource):
    """Equal-weight isotropic Gaussians at ``self.means`` ([K, 2]) with standard deviation ``self.std``."""

    name = "mixture"
    means: torch.Tensor
    std: float

    def urls(self) -> list[str]:
        return []  # not a shard dataset: batches() streams samples directly

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(self.means), (n,), generator=generator)
        return self.means[idx] + self.std * torch.randn(n, 2, generator=generator)

    def batches(self, *, batch_size: int, seed: int, rank: int, world_size: int, start_batch: int):
        def gen():
            index = start_batch
            g = torch.Generator()
            while True:
                g.manual_seed(_batch_seed(seed, rank, index, self.name))
                yield {"image": self.sample(batch_size, g), "skipped": 0}
                index += 1

        return gen()


@register("dataset", "grid25")
class Grid25(Mixture2D):
    """5x5 grid of Gaussians (means {-4,-2,0,2,4}^2, std 0.05): the PacGAN / VEEGAN 2D benchmark."""

    name = "grid25"

    def __init__(self, size: int = 5, spacing: float = 2.0, std: float = 0.05):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if spacing <= 0 or std <= 0:
            raise ValueError(f"spacing and std must be > 0, got spacing={spacing}, std={std}")
        self.size, self.spacing, self.std = size, spacing, std
        axis = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * spacing
        self.means = torch.cartesian_prod(axis, axis)  # [size^2, 2]
        self.extent = float(axis.abs().max()) + spacing / 2


@register("dataset", "ring8")
class Ring8(Mixture2D):
    """Ring of 8 Gaussians (radius 1, std 0.01): the Unrolled GAN / PacGAN 2D benchmark."""

    name = "ring8"

    def __init__(self, modes: int = 8, radius: float = 1.0, std: float = 0.01):
        if modes < 1:
            raise ValueError(f"modes must be >= 1, got {modes}")
        if radius <= 0 or std <= 0:
            raise ValueError(f"radius and std must be > 0, got radius={radius}, std={std}")
        self.modes, self.radius, self.std = modes, radius, std
        angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        self.means = (radius * torch.stack([angles.cos(), angles.sin()], 1)).float()  # [modes, 2]
        self.extent = 1.5 * radius
