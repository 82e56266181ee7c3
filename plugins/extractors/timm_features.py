"""``timm``: any timm model as a feature extractor (``timm:<model>`` in a recipe), weights never downloaded.

Weights come from ``weights:`` (a local .safetensors, or a .pth/.bin read with ``torch.load(weights_only=True)``)
or from an existing Hugging Face hub cache (``~/.cache/huggingface``, filled beforehand on a machine with
internet); ``random_init: true`` builds the network untrained (tests and pipelines checks only: its numbers mean
nothing). Features are the model's pre-logits (pooled) output; logits too when the model has a classifier.
Inputs are resized and normalised as the model's pretrained config says (size, interpolation, mean, std).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torch.nn.functional as F

from ganforge.api import Extractor
from ganforge.errors import PluginError
from ganforge.registry import register

from .common import rgb01, sha256_of


def _cached_hub_file(hub_id: str) -> Path | None:
    """The model's weight file if a hub cache already holds it (looked up on disk: never a request)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _read_weights(p: Path, where: str) -> dict:
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # SafetensorError / UnpicklingError are not OSErrors
        raise PluginError(f"{where}: cannot read weights {p}: {' '.join(str(e).split())[:200]}") from None
    for key in ("state_dict", "model"):  # common wrappers of training checkpoints
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise PluginError(f"{where}: {p} holds no state dict")
    return sd


def build_timm(model: str, weights: str | None, random_init: bool, seed: int, where: str,
               hint: str = "weights: /path/model.safetensors") -> tuple[torch.nn.Module, str]:
    """A timm model and the checksum of its weights (the metric and the style extractor share this): random init
    (tests), ``weights`` (a local file), or an existing hub cache; never a download. ``hint``: the option to
    name in the missing-weights error."""
    import timm

    kind = where.split(" ")[0]
    if model not in timm.list_models():
        close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.6)
        more = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise PluginError(f"{kind} 'timm': unknown timm model {model!r}{more}")
    if random_init and weights is not None:
        raise ValueError("give either weights or random_init: true, not both")
    if random_init:
        with torch.random.fork_rng(devices=[]):  # building must not shift the caller's random stream
            torch.manual_seed(seed)
            return timm.create_model(model, pretrained=False), f"random-init:seed{seed}"
    with torch.device("meta"):  # no random init of parameters the weights replace at once
        net = timm.create_model(model, pretrained=False)
    hub_id = (net.pretrained_cfg or {}).get("hf_hub_id")
    p = Path(weights).expanduser() if weights is not None else (_cached_hub_file(hub_id) if hub_id else None)
    if p is None:
        raise PluginError(f"{where}: no weights: nothing in the Hugging Face cache for {hub_id or model} and no "
                          f"weights: file given; fetch once where there is internet (timm.create_model('{model}', "
                          f"pretrained=True)) and copy ~/.cache/huggingface here, or set {hint}")
    if not p.is_file():
        raise PluginError(f"{where}: weights {p}: no such file")
    sd = _read_weights(p, where)
    try:
        net.load_state_dict(sd, assign=True)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise PluginError(f"{where}: weights {p} do not fit the model: {first.strip()[:200]}") from None
    if any(t.is_meta for t in (*net.parameters(), *net.buffers())):
        raise PluginError(f"{where}: weights {p} leave part of the model unset")
    return net, sha256_of(p)


@register("extractor", "timm")
class TimmFeatures(Extractor):
    """A timm model's pooled pre-logit features (+ logits if it has a classifier). ``model``: a timm name (e.g.
    vit_small_patch14_dinov2); ``weights``: a local file, else an existing hub cache; ``random_init`` for tests."""

    def __init__(self, model: str = "", weights: str | None = None, random_init: bool = False, seed: int = 0,
                 input_size: int | None = None):
        net, self.checksum = build_timm(model, weights, random_init, seed, f"extractor 'timm:{model}'")
        self.net = net.eval()
        cfg = self.net.pretrained_cfg or {}
        self.name = f"timm:{model}"
        size = input_size or cfg.get("input_size", (3, 224, 224))[-1]
        self.size = int(size)
        self.mode = "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear"
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        self.has_logits = getattr(self.net, "num_classes", 0) > 0

    def to(self, device) -> TimmFeatures:
        self.net = self.net.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = rgb01(images)
        if x.shape[-2:] != (self.size, self.size):  # antialias when shrinking, as PIL-based timm transforms do
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, align_corners=False,
                              antialias=x.shape[-1] > self.size).clamp(0, 1)
        x = (x - self.mean) / self.std
        h = self.net.forward_features(x)
        out = {"features": self.net.forward_head(h, pre_logits=True).flatten(1)}
        if self.has_logits:
            out["logits"] = self.net.forward_head(h)
        return out

    contract_options = {"model": "test_resnet", "random_init": True, "input_size": 32}
