"""What a finished run leaves behind -> something to sample from: a run dir, a checkpoint dir or an exported file.

``resolve`` turns what the user named into a ``Source`` (one line, exit 2, for anything unusable); ``load_ema``
builds the architecture through ``ganforge.build.build`` (the one build path), puts a growing G at the stage of the
checkpoint's kimg (exactly what a resume would), and loads G_ema's tensors through the safe checkpoint reader
(safetensors + JSON: nothing is unpickled). Every tensor is checked against the architecture first, so a state that
does not fit is one line naming the file and the first tensor that differs, not a torch traceback.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GanforgeError

EXPORT_FORMAT = "1"  # metadata "ganforge_format" of an exported generator (apps/export.py)
_STEP_DIR = re.compile(r"^step-\d+$")


class ArtifactError(GanforgeError):
    """A run, checkpoint or exported generator cannot be used (one line naming it and why)."""


@dataclass(frozen=True)
class StageInfo:
    """Where a (growing) generator stands: the resolution it renders and the fade-in alpha of its newest layers."""

    resolution: int
    alpha: float = 1.0


@dataclass
class Source:
    """A resolved target. ``kind`` is "checkpoint" (``ckpt_dir`` set, ``recipe`` from the run's recipe.yaml) or
    "export" (``export_path`` and ``meta`` set, ``recipe`` None: an export carries only the model block)."""

    kind: str
    path: Path  # what the user named
    run_dir: Path | None
    ckpt_dir: Path | None
    recipe: object | None  # ganforge.config.Recipe
    step: int
    kimg: float
    export_path: Path | None = None
    meta: dict | None = None  # an export's metadata, JSON-decoded
    skipped: list = field(default_factory=list)  # (dir, reason) of newer checkpoints that did not verify
    _state: dict | None = field(default=None, repr=False)

    def state(self) -> dict:
        """The checkpoint's shared state tree {"format", "loop", "feed", "task", ...} (read once, safely)."""
        if self._state is None:
            from ..engine import statefile

            self._state = statefile.load_tree(self.ckpt_dir, "state")
        return self._state


def _is_checkpoint_dir(p: Path) -> bool:
    return (p / "manifest.json").is_file() or (p / "state.json").is_file() or bool(_STEP_DIR.match(p.name))


def _is_run_dir(p: Path) -> bool:
    return (p / "recipe.yaml").is_file() or (p / "checkpoints").is_dir()


def load_run_recipe(run_dir: Path, what: Path | None = None):
    """``<run>/recipe.yaml`` validated by ganforge.config (errors name the file and the dotted path)."""
    from .. import config

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise ArtifactError(f"{what or run_dir}: no recipe.yaml in {run_dir}; cannot tell which architecture "
                            "the checkpoint holds")
    return config.load_recipe(path)


def resolve(target: str | Path, action: str = "sample") -> Source:
    """A run dir (newest checkpoint that verifies), a checkpoint dir, or an exported ``.safetensors`` file."""
    from ..engine import checkpoint, statefile

    p = Path(target)
    if not p.exists():
        raise ArtifactError(f"{p}: no such run directory, checkpoint or exported file")
    if p.is_file():
        if p.suffix == ".safetensors":
            return _export_source(p)
        raise ArtifactError(f"{p}: not a run directory, a checkpoint directory or an exported .safetensors file")
    if _is_checkpoint_dir(p):
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
        return _checkpoint_source(p, p, run_dir)
    if _is_run_dir(p):
        root = p / "checkpoints"
        dirs = checkpoint.checkpoint_dirs(root)
        if not dirs:
            raise ArtifactError(f"{p}: no checkpoint yet (the run has not reached checkpoint.every); "
                                f"nothing to {action}")
        found, skipped = statefile.newest_verified(dirs)  # what checkpoint.latest does, with the reasons
        if found is None:
            raise ArtifactError(f"{p}: no checkpoint verifies ({len(dirs)} found; newest {dirs[-1]}: "
                                f"{skipped[0][1]})")
        src = _checkpoint_source(p, found, p, verified=True)
        src.skipped = skipped
        return src
    raise ArtifactError(f"{p}: not a run directory (no recipe.yaml or checkpoints/), a checkpoint directory "
                        "or an exported .safetensors file")


def _checkpoint_source(target: Path, d: Path, run_dir: Path | None, verified: bool = False) -> Source:
    from ..engine import checkpoint, statefile

    if not verified and (reason := statefile.verify(d)) is not None:
        raise ArtifactError(f"{d}: checkpoint does not verify: {reason}")
    if run_dir is None:
        raise ArtifactError(f"{d}: not inside a run directory (<run>/checkpoints/step-N); its recipe.yaml, "
                            "which names the architecture, cannot be found")
    recipe = load_run_recipe(run_dir, d)
    src = Source("checkpoint", target, run_dir, d, recipe, step=0, kimg=0.0)
    state = src.state()
    loop = state.get("loop") if isinstance(state, dict) else None
    if state.get("format") != checkpoint.FORMAT_VERSION or not isinstance(loop, dict):
        raise ArtifactError(f"{d}: not a ganforge checkpoint of format {checkpoint.FORMAT_VERSION}")
    src.step, src.kimg = int(loop["step"]), loop["images"] / 1000
    return src


def read_export_meta(path: Path) -> dict:
    """The JSON-decoded safetensors metadata of an exported generator (reads the header only)."""
    from safetensors import safe_open

    from ..engine.statefile import describe

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # SafetensorError is not an OSError; a truncated or foreign file lands here
        raise ArtifactError(f"cannot read {path}: {describe(e)}") from None
    if "ganforge_format" not in raw:
        raise ArtifactError(f"{path}: not a ganforge export (no 'ganforge_format' in its metadata); export one "
                            "with `ganforge export RUN --out G.safetensors`")
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            raise ArtifactError(f"{path}: metadata {k!r} is not valid JSON") from None
    if meta["ganforge_format"] != EXPORT_FORMAT:
        raise ArtifactError(f"{path}: export format {meta['ganforge_format']!r} is not {EXPORT_FORMAT!r}")
    for key, kind in (("model", dict), ("stage", dict), ("step", int)):
        if not isinstance(meta.get(key), kind):
            raise ArtifactError(f"{path}: metadata {key!r} missing or malformed")
    return meta


def _export_source(p: Path) -> Source:
    meta = read_export_meta(p)
    return Source("export", p, None, None, None, step=meta["step"], kimg=float(meta.get("kimg", 0.0)),
                  export_path=p, meta=meta)


# ---- building G and loading its tensors -----------------------------------------------------------------------
def build_generator(arch, stage: StageInfo, device="cpu"):
    """A fresh G of ``arch`` at ``stage`` (its random init is replaced by the tensors loaded next; built under a
    forked RNG so loading never shifts the caller's random stream)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        G = arch.build_generator()
    if hasattr(G, "set_stage"):
        G.set_stage(stage.resolution, stage.alpha)
    return G


def check_tensors(module, tensors: dict, where, model_type: str, prefix: str = "") -> None:
    """Every tensor ``module`` expects is in ``tensors`` with its shape, and nothing else is: else one line
    naming ``where`` and the first tensor that differs."""
    import torch

    expected = module.state_dict()
    for name, t in expected.items():
        got = tensors.get(name)
        if got is None:
            raise ArtifactError(f"{where}: tensor {prefix + name!r} missing (model {model_type!r} expects shape "
                                f"{list(t.shape)}); the state does not match the architecture")
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(t.shape):
            shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ArtifactError(f"{where}: tensor {prefix + name!r} has shape {shape}, model {model_type!r} "
                                f"expects {list(t.shape)}; the state does not match the architecture")
    if extra := [k for k in tensors if k not in expected]:
        raise ArtifactError(f"{where}: tensor {prefix + extra[0]!r} is not part of model {model_type!r}; the "
                            "state does not match the architecture")


def load_modules(source: Source, names=("G_ema",), device="cpu"):
    """(arch, {name: module in eval mode}, stage) for modules of a checkpoint's task state ("G", "G_ema")."""
    from ..build import build

    if source.kind != "checkpoint":
        raise ArtifactError(f"{source.path}: an exported generator, not a checkpoint")
    c = build(source.recipe, preflight_check=False)  # every plugin through the one build path
    st = c.schedule(1).at(source.kimg)  # what Trainer.resume + start_stream put the networks at
    stage = StageInfo(int(st.resolution), float(st.alpha))
    state = source.state()
    modules = (state.get("task") or {}).get("modules") if isinstance(state.get("task"), dict) else None
    where = source.ckpt_dir / "state.safetensors"
    model_type = source.recipe.model["type"]
    out = {}
    for name in names:
        tensors = modules.get(name) if isinstance(modules, dict) else None
        if not isinstance(tensors, dict):
            raise ArtifactError(f"{where}: no task.modules.{name} in the checkpoint")
        G = build_generator(c.arch, stage)
        check_tensors(G, tensors, where, model_type, prefix=f"task.modules.{name}.")
        G.load_state_dict(tensors)
        out[name] = G.to(_device(device)).eval().requires_grad_(False)
    return c.arch, out, stage


def load_ema(source: Source, device="cpu", ema: bool = True):
    """(arch, G_ema in eval mode on ``device``, StageInfo); ``ema=False`` loads the raw G instead. Works for an
    exported file too (its ``G_ema.`` / ``G.`` tensors)."""
    if source.kind == "export":
        from .export import load_export

        gen = load_export(source.export_path, ema=ema, device=device)
        return gen.arch, gen.module, gen.stage
    name = "G_ema" if ema else "G"
    arch, modules, stage = load_modules(source, (name,), device)
    return arch, modules[name], stage


def _device(device):
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ArtifactError(f"--device {device!r}: {' '.join(str(e).split())}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"--device {device}: CUDA is not available on this machine")
    return dev


def warn_skipped(source: Source) -> None:
    for d, reason in source.skipped:
        print(f"warning: skipping checkpoint {d.name}: {reason}", file=sys.stderr)
