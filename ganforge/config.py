"""Recipe loading: YAML + CLI overrides -> a validated, typed ``Recipe``.

Every error is one line naming the file and the dotted path (``recipes/x.yaml: train.batch_size: expected int,
got 'abc'``). Plugin blocks (``model:``, ``loss:`` ...) are checked against the named plugin's constructor
signature, so a misspelt option fails before any run directory exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import registry
from .engine.schedule import ScheduleConfig
from .errors import ConfigError, PluginError
from .metrics_config import MetricsConfig
from .metrics_config import validate as validate_metrics
from .overrides import apply_overrides


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class TrainConfig:
    batch_size: int = 64  # per process, per micro-step
    kimg: float = 100.0  # schedule length in thousands of real images shown to D (all ranks)
    max_steps: int | None = None  # stop early at this iteration (checkpointed); the schedule is unchanged
    grad_accum: int = 1  # micro-batches per phase
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    g_opt: OptimConfig = field(default_factory=OptimConfig)
    d_opt: OptimConfig = field(default_factory=OptimConfig)
    ema_kimg: float = 10.0  # EMA half-life of G in kimg; 0 disables
    ema_rampup: float | None = None  # StyleGAN-style ramp: half-life <= rampup * kimg so far
    deterministic: bool = False  # deterministic algorithms (bit-identical resume on CPU)
    threads: int | None = None  # torch intra-op threads per process
    channels_last: bool = False  # NHWC memory format for G, D and real batches (faster convs on tensor cores)
    # torch.compile the main G/D forwards (true: inductor; or a dynamo backend name such as aot_eager); lazy
    # penalties stay eager (no double backward)
    compile: bool | str = False
    # A phase whose gradients are not finite skips its optimizer step (counted, logged as nonfinite_skipped).
    # After `nonfinite_patience` such steps in a row: "stop" (one line naming the last good checkpoint) or
    # "rollback" (reload the last good checkpoint, lrs x rollback_lr_factor; at most max_rollbacks times).
    nonfinite_patience: int = 3
    nonfinite_policy: Literal["stop", "rollback"] = "stop"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3


@dataclass
class DataConfig:
    source: dict = field(default_factory=lambda: {"type": "digits"})  # dataset plugin block
    workers: int = 2
    xflip: bool = False
    # Samples mixed per stream round (whole shards are gathered until the round holds this many, then shuffled
    # together); 0 = one shard per round. Memory per worker: about this many encoded samples plus one shard.
    shuffle_buffer: int = 2000

    def __post_init__(self):  # raised inside load_recipe, which prefixes the recipe file
        if self.shuffle_buffer < 0:
            raise ConfigError(f"data.shuffle_buffer: must be >= 0, got {self.shuffle_buffer}")


@dataclass
class LogConfig:
    every: int = 50
    every_kimg: float | None = None  # additionally (or, with every: 0, only) every this many kimg
    wandb: bool = True  # Accelerate's wandb tracker; offline unless WANDB_API_KEY / WANDB_MODE say otherwise
    project: str = "ganforge"
    progress: bool = True


@dataclass
class SampleConfig:
    every: int = 500
    every_kimg: float | None = None
    # A grid of the untrained G at step 0, then at every/8, every/4, every/2 (and likewise for every_kimg): the
    # first minutes of a run show whether it learns, instead of nothing until step 500.
    early: bool = True
    n: int = 64
    truncation_psi: float = 1.0  # != 1 needs a G whose forward takes truncation_psi (StyleGAN-like)


@dataclass
class CheckpointConfig:
    every: int = 1000
    every_kimg: float | None = None
    keep: int = 3


class RecipeDict:
    """``to_dict`` for every task's recipe dataclass: plain lists and dicts, as YAML and overrides want them."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        _tuples_to_lists(d)
        return d


@dataclass
class Recipe(RecipeDict):
    name: str
    model: dict
    loss: dict = field(default_factory=lambda: {"type": "nonsaturating"})
    balancer: dict = field(default_factory=lambda: {"type": "alternate"})
    regularizers: list[dict] = field(default_factory=list)
    augment: dict | None = None
    seed: int = 0
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    metrics: MetricsConfig | None = None  # periodic evaluation (metrics_config.py)
    # Plugin modules that are not pip-installed: dotted module paths, or .py files (relative to the recipe file;
    # written back absolute, so the run dir's recipe.yaml resumes from anywhere). Imported before any block is
    # checked, in this order, on every rank alike.
    imports: list[str] = field(default_factory=list)

    task: typing.ClassVar[str] = "gan"  # not a field: a GAN recipe never needs to say so

    def data_resolution(self) -> int:
        """The resolution the data stream is read at, the model's (``ganforge run --data FOLDER`` packs at it)."""
        from .errors import DataError

        arch = registry.build("architecture", self.model, "model")
        shape = tuple(getattr(arch, "sample_shape", (arch.channels, arch.resolution, arch.resolution)))
        if len(shape) != 3:
            raise DataError(f"--data: model {self.model['type']!r} does not generate images")
        return arch.resolution


# plugin blocks: dotted path -> registry kind
PLUGIN_BLOCKS = {"model": "architecture", "loss": "loss", "balancer": "balancer", "augment": "augment",
                 "data.source": "dataset", "regularizers": "regularizer"}

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _tuples_to_lists(d):
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
        elif isinstance(v, dict):
            _tuples_to_lists(v)


def _typename(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value: Any, tp, path: str) -> Any:
    """Validate/convert ``value`` against annotation ``tp``; raise ConfigError(path) on mismatch."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, path)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{path}: expected {' or '.join(_typename(a) for a in args)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _build_dataclass(tp, value, path)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(_check(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_check(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2:
            return {k: _check(v, args[1], f"{path}.{k}") for k, v in value.items()}
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads "2e-4" (no dot) as a string; accept any numeric spelling.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan/.inf: no setting of ours means anything with them
            raise ConfigError(f"{path}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected string, got {value!r}")
        return value
    return value


def _unknown_key(key: str, known, path: str, what: str = "key") -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
    return ConfigError(f"{path}: unknown {what}{hint}")


def _build_dataclass(cls, raw: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise _unknown_key(str(key), fields, path)
        kwargs[key] = _check(value, hints[key], path)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{name}: required key is missing")
    return cls(**kwargs)


def check_plugin_block(kind: str, block: dict, path: str, engine_args=()) -> dict:
    """Check a plugin block's ``type`` and options against the plugin's signature; return it with types fixed."""
    if not isinstance(block, dict) or "type" not in block:
        raise ConfigError(f"{path}: expected a mapping with a 'type' key naming a {kind} plugin")
    try:
        entry = registry.get(kind, block["type"], where=f"{path}.type")
    except PluginError as e:
        raise ConfigError(str(e)) from None
    params = registry.plugin_options(entry.obj)
    hints = typing.get_type_hints(entry.obj.__init__ if inspect.isclass(entry.obj) else entry.obj)
    out = {"type": block["type"]}
    for key, value in block.items():
        if key == "type":
            continue
        if key not in params or key in engine_args:
            known = [p for p in params if p not in engine_args]
            raise _unknown_key(str(key), known, f"{path}.{key}", f"option for {kind} {block['type']!r}")
        out[key] = _check(value, hints.get(key, Any), f"{path}.{key}")
    return out


def load_raw(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: recipe file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    return raw


# arguments the engine supplies to plugins itself; a recipe may not set them
ENGINE_ARGS = {"dataset": ()}


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    raw = load_raw(path)
    raw.setdefault("name", Path(path).stem)
    apply_overrides(raw, list(overrides))  # a plugin block whose type changes drops the old type's options
    imports = raw.get("imports")
    if isinstance(imports, list):  # types are checked in validate(); here only .py paths become absolute
        raw["imports"] = [str((Path(path).parent / i).resolve()) if isinstance(i, str) and i.endswith(".py")
                          else i for i in imports]
    try:
        return validate(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def validate(raw: dict):
    """A raw recipe mapping -> the typed recipe of its ``task:`` (absent: a GAN ``Recipe``)."""
    from .tasks import validator

    return validator(raw.get("task", "gan"))(raw)


def check_common(recipe) -> None:
    """What every task's recipe shares: its ``imports`` load (plugins first), its ``name`` can name a run dir."""
    for i, spec in enumerate(recipe.imports):
        try:
            registry.import_recipe_module(spec, f"imports[{i}]")
        except PluginError as e:
            raise ConfigError(str(e)) from None
    if not re.match(r"^[A-Za-z0-9_.-]+$", recipe.name):
        raise ConfigError(f"name: {recipe.name!r} must be letters, digits, '_', '-', '.' (it names the run dir)")


def validate_gan(raw: dict) -> Recipe:
    raw = {k: v for k, v in raw.items() if k != "task"}  # `task: gan` is the default, never written back
    recipe = _build_dataclass(Recipe, raw, "")
    check_common(recipe)
    recipe.model = check_plugin_block("architecture", recipe.model, "model")
    recipe.loss = check_plugin_block("loss", recipe.loss, "loss")
    recipe.balancer = check_plugin_block("balancer", recipe.balancer, "balancer")
    if recipe.augment is not None:
        recipe.augment = check_plugin_block("augment", recipe.augment, "augment")
    recipe.regularizers = [check_plugin_block("regularizer", r, f"regularizers[{i}]")
                           for i, r in enumerate(recipe.regularizers)]
    recipe.data.source = check_plugin_block("dataset", recipe.data.source, "data.source")
    if recipe.metrics is not None:
        recipe.metrics = validate_metrics(recipe.metrics, check_plugin_block)
    _check_ranges(recipe)
    return recipe


def check_intervals(r) -> None:
    """log/sample/checkpoint intervals of a task that counts kimg: in steps, in kimg, or both."""
    for name in ("log", "sample", "checkpoint"):
        block = getattr(r, name)
        if block.every < 0 or (block.every == 0 and block.every_kimg is None):
            raise ConfigError(f"{name}.every: must be > 0 (or 0 with {name}.every_kimg set), got {block.every}")
        if block.every_kimg is not None and block.every_kimg <= 0:
            raise ConfigError(f"{name}.every_kimg: must be > 0, got {block.every_kimg}")


def _check_ranges(r: Recipe):
    positive = {"train.batch_size": r.train.batch_size, "train.grad_accum": r.train.grad_accum,
                "sample.n": r.sample.n, "checkpoint.keep": r.checkpoint.keep,
                "train.nonfinite_patience": r.train.nonfinite_patience}
    for path, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{path}: must be > 0, got {v}")
    check_intervals(r)
    if not 0 < r.train.rollback_lr_factor <= 1:
        raise ConfigError(f"train.rollback_lr_factor: must be in (0, 1], got {r.train.rollback_lr_factor}")
    if r.train.max_rollbacks < 0:
        raise ConfigError(f"train.max_rollbacks: must be >= 0, got {r.train.max_rollbacks}")
    if r.seed < 0 or r.seed >= 2**32:
        raise ConfigError(f"seed: must be in [0, 2**32), got {r.seed}")
    if r.train.kimg <= 0:
        raise ConfigError(f"train.kimg: must be > 0, got {r.train.kimg}")
    if isinstance(r.train.compile, str):
        from torch._dynamo import list_backends

        backends = sorted({*list_backends(), "eager", "aot_eager"})  # plus the two debug backends worth naming
        if r.train.compile not in backends:
            raise ConfigError(f"train.compile: unknown torch.compile backend {r.train.compile!r} "
                              f"(true, false, or one of: {', '.join(backends)})")
    if r.data.workers < 0:
        raise ConfigError(f"data.workers: must be >= 0, got {r.data.workers}")
    if r.train.ema_kimg < 0:
        raise ConfigError(f"train.ema_kimg: must be >= 0, got {r.train.ema_kimg}")
    for name, o in (("g_opt", r.train.g_opt), ("d_opt", r.train.d_opt)):
        if o.lr <= 0:
            raise ConfigError(f"train.{name}.lr: must be > 0, got {o.lr}")
        if not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"train.{name}.betas: each must be in [0, 1), got {list(o.betas)}")


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
