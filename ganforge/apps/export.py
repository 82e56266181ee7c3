"""Generators out of runs: one ``.safetensors`` file per export, and ``ganforge.load_generator`` to use it.

An export holds G's and G_ema's tensors (``G.*``, ``G_ema.*``) and, as safetensors metadata (str -> JSON text),
what is needed to rebuild and use them without the run: ``ganforge_format``, ``ganforge_version``, ``model`` (the
recipe's model block), ``truncation_psi`` (the sample block's default), ``stage`` ({resolution, alpha}), ``step``,
``kimg``, ``recipe`` (its name) and ``source`` (the checkpoint it came from). Loading parses that header and copies
tensor bytes: no code runs. The architecture is rebuilt from ``model`` through the registry (ganforge.build) and
every tensor's name and shape is checked against it before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from .artifacts import (
    EXPORT_FORMAT,
    ArtifactError,
    Source,
    StageInfo,
    _device,
    build_generator,
    check_tensors,
    load_modules,
    read_export_meta,
    resolve,
)

PREFIXES = ("G.", "G_ema.")


class Generator:
    """A trained generator ready to sample: ``module`` (G_ema, or G with ``ema=False``; eval mode), ``arch`` (the
    architecture plugin), ``stage`` (StageInfo), ``truncation_psi`` (the recipe's default), ``step``, ``kimg``."""

    def __init__(self, arch, module, stage: StageInfo, *, truncation_psi: float = 1.0, step: int = 0,
                 kimg: float = 0.0, model_type: str = "", source: str = ""):
        self.arch, self.module, self.stage = arch, module, stage
        self.truncation_psi, self.step, self.kimg = truncation_psi, step, kimg
        self.model_type, self.source = model_type or type(arch).__name__, source

    @property
    def device(self):
        import torch

        return next((t.device for t in self.module.state_dict().values()), torch.device("cpu"))

    def latent(self, n: int, seed: int = 0):
        """``n`` latents from ``seed``: the same ones `ganforge sample --seed` uses, and for the recipe's seed and
        ``sample.n`` the fixed latents of the run's own sample grids. Drawn on the CPU, then moved to the device."""
        import torch

        if n < 1:
            raise ArtifactError(f"--n: must be >= 1, got {n}")
        g = torch.Generator().manual_seed(int(seed))
        return self.arch.sample_latents(int(n), generator=g).to(self.device)

    def check_truncation(self, truncation: float | None) -> float:
        psi = self.truncation_psi if truncation is None else float(truncation)
        if psi != 1.0 and not getattr(self.arch, "supports_truncation", False):
            raise ArtifactError(f"--truncation {psi:g}: the generator of architecture {self.model_type!r} does not "
                                "support truncation")
        return psi

    def raw(self, z, truncation: float | None = None):
        """G's output for ``z`` (a tensor, or a pyramid for multi-scale architectures), one forward pass."""
        import torch

        psi = self.check_truncation(truncation)
        generate = getattr(self.arch, "generate", None)
        with torch.no_grad():
            z = z.to(self.device)
            return generate(self.module, z, psi) if generate is not None else self.module(z)

    def render(self, out):
        """G's output -> images ``[N, C, H, W]`` in [-1, 1] (the architecture's ``render_samples`` if it has one)."""
        import torch

        render = getattr(self.arch, "render_samples", None)
        with torch.no_grad():
            return render(out) if render is not None else out

    def generate(self, z, truncation: float | None = None):
        """Images ``[N, C, H, W]`` in [-1, 1] for latents ``z`` on the generator's device, as the run's sample grids
        are made (GANTask.render). ``truncation``: None = the recipe's default; != 1 needs an architecture that
        supports it."""
        return self.render(self.raw(z, truncation))

    def sample(self, n: int, seed: int = 0, truncation: float | None = None, batch_size: int = 64):
        """``n`` images (CPU) from ``latent(n, seed)``, G run ``batch_size`` at a time."""
        return self.render(self.raw_batches(self.latent(n, seed), truncation, batch_size))

    def raw_batches(self, z, truncation: float | None = None, batch_size: int = 64):
        """G's outputs for ``z`` computed ``batch_size`` at a time, concatenated on the CPU."""
        import torch

        from ..api import tree_map

        if batch_size < 1:
            raise ArtifactError(f"--batch: must be >= 1, got {batch_size}")
        outs = [tree_map(lambda t: t.cpu(), self.raw(z[i:i + batch_size], truncation))
                for i in range(0, z.shape[0], batch_size)]
        if isinstance(outs[0], (list, tuple)):
            return type(outs[0])(torch.cat([o[k] for o in outs]) for k in range(len(outs[0])))
        return torch.cat(outs)

    def __repr__(self) -> str:
        return (f"Generator({self.model_type!r}, stage={self.stage.resolution}@{self.stage.alpha:g}, "
                f"step={self.step}, device={self.device})")


def generator(source: Source, ema: bool = True, device="cpu") -> Generator:
    """The Generator of a resolved run / checkpoint / export."""
    if source.kind == "export":
        return load_export(source.export_path, ema=ema, device=device, meta=source.meta)
    name = "G_ema" if ema else "G"
    arch, modules, stage = load_modules(source, (name,), device)
    r = source.recipe
    return Generator(arch, modules[name], stage, truncation_psi=r.sample.truncation_psi, step=source.step,
                     kimg=source.kimg, model_type=r.model["type"], source=str(source.ckpt_dir))


def load_generator(path, ema: bool = True, device="cpu") -> Generator:
    """``ganforge.load_generator("G.safetensors").sample(16, seed=0)``: images in [-1, 1]. ``path`` is an exported
    file (also a run or checkpoint directory); ``ema=False`` loads the raw G instead of G_ema."""
    return generator(resolve(path), ema=ema, device=device)


def load_export(path, ema: bool = True, device="cpu", meta: dict | None = None) -> Generator:
    from safetensors.torch import load_file

    from .. import config
    from ..build import build
    from ..engine.statefile import describe
    from ..errors import ConfigError

    path = Path(path)
    meta = meta if meta is not None else read_export_meta(path)
    try:
        recipe = config.validate({"name": "export", "model": meta["model"]})
    except ConfigError as e:
        raise ArtifactError(f"{path}: metadata {e}") from None
    c = build(recipe, preflight_check=False)  # the architecture from the model block, through the registry
    try:
        tensors = load_file(str(path))
    except Exception as e:  # SafetensorError is not an OSError
        raise ArtifactError(f"cannot read {path}: {describe(e)}") from None
    st = meta["stage"]
    stage = StageInfo(int(st.get("resolution", c.arch.resolution)), float(st.get("alpha", 1.0)))
    model_type = recipe.model["type"]
    parts = {p: {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)} for p in PREFIXES}
    if stray := [k for k in tensors if not k.startswith(PREFIXES)]:
        raise ArtifactError(f"{path}: tensor {stray[0]!r} is neither 'G.*' nor 'G_ema.*'")
    want = "G_ema." if ema else "G."
    if not parts[want]:
        raise ArtifactError(f"{path}: holds no {want[:-1]} tensors")
    try:
        G = build_generator(c.arch, stage)
    except ValueError as e:
        raise ArtifactError(f"{path}: metadata stage {st}: {e}") from None
    for p, part in parts.items():  # every tensor of the file, not only the ones loaded
        if part:
            check_tensors(G, part, path, model_type, prefix=p)
    G.load_state_dict(parts[want])
    G = G.to(_device(device)).eval().requires_grad_(False)
    return Generator(c.arch, G, stage, truncation_psi=float(meta.get("truncation_psi", 1.0)), step=meta["step"],
                     kimg=float(meta.get("kimg", 0.0)), model_type=model_type, source=str(meta.get("source", "")))


def export(source: Source, out: Path) -> dict:
    """Write G and G_ema of a checkpoint to ``out`` (.safetensors) atomically; returns the metadata written."""
    from safetensors.torch import save

    from .. import __version__
    from ..fileio import write_atomic

    out = Path(out)
    if source.kind == "export":
        raise ArtifactError(f"{source.path}: already an exported generator; copy the file instead")
    if out.suffix != ".safetensors":
        raise ArtifactError(f"--out {out}: an export is a .safetensors file (e.g. G.safetensors)")
    _, modules, stage = load_modules(source, ("G", "G_ema"))
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous().clone()
               for name, m in modules.items() for k, v in m.state_dict().items()}
    r = source.recipe
    meta = {"ganforge_format": EXPORT_FORMAT, "ganforge_version": __version__, "model": r.model,
            "truncation_psi": r.sample.truncation_psi, "stage": {"resolution": stage.resolution,
                                                                   "alpha": stage.alpha},
            "step": source.step, "kimg": source.kimg, "recipe": r.name,
            "source": str(Path(source.ckpt_dir).resolve())}
    data = save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()})
    write_atomic(out, lambda f: f.write(data), ArtifactError)  # readers never see half an export
    return meta
