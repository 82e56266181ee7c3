"""``transform_net``: the feed-forward image-transform network of a fast stylizer, kind ``style_network``.

The shape of Johnson, Alahi and Fei-Fei, "Perceptual Losses for Real-Time Style Transfer and Super-Resolution"
(ECCV 2016): a wide-kernel stem, strided convolutions down, residual blocks, back up, a wide-kernel head. Two
choices differ from the paper, both for cleaner images: instance normalisation instead of batch normalisation
(Ulyanov et al. 2016, "Instance Normalization: The Missing Ingredient for Fast Stylization": each image is
normalised on its own, so a stylised image never depends on the rest of its batch), and upsampling by a
nearest-neighbour resize followed by a convolution instead of a transposed convolution (Odena et al. 2016,
"Deconvolution and Checkerboard Artifacts"). Each upsampling resizes to the exact size its encoder level had, so
any image size goes through and comes out at the size it went in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.api import StyleNetwork
from ganforge.registry import register


class ConvBlock(nn.Module):
    """Replicate padding (no dark frame for the losses to fight; works on images of any size, unlike reflection),
    convolution, then instance norm and ReLU unless ``plain``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, plain: bool = False):
        super().__init__()
        self.pad = kernel // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride)
        # affine: the network learns each channel's scale and shift after normalising (the style's contrast)
        self.norm = None if plain else nn.InstanceNorm2d(c_out, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.pad(x, (self.pad,) * 4, mode="replicate"))
        return x if self.norm is None else F.relu(self.norm(x))


class Residual(nn.Module):
    """x + conv-norm-ReLU-conv-norm(x): the blocks change the texture while the identity keeps the layout."""

    def __init__(self, channels: int):
        super().__init__()
        self.a = ConvBlock(channels, channels, 3)
        self.b = nn.Conv2d(channels, channels, 3)
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.b(F.pad(self.a(x), (1, 1, 1, 1), mode="replicate")))


class TransformNet(nn.Module):
    """Images ``[B, 3, H, W]`` in [-1, 1] -> stylised images of the same shape, in [-1, 1] (tanh)."""

    def __init__(self, width: int, res_blocks: int, downsamples: int, kernel: int):
        super().__init__()
        chans = [width * 2 ** i for i in range(downsamples + 1)]
        self.stem = ConvBlock(3, width, kernel)
        self.down = nn.ModuleList(ConvBlock(a, b, 3, stride=2) for a, b in zip(chans, chans[1:]))
        self.blocks = nn.Sequential(*(Residual(chans[-1]) for _ in range(res_blocks)))
        self.up = nn.ModuleList(ConvBlock(b, a, 3) for a, b in zip(reversed(chans[:-1]), reversed(chans[1:])))
        self.head = ConvBlock(width, 3, kernel, plain=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        sizes = []
        for down in self.down:
            sizes.append(h.shape[-2:])
            h = down(h)
        h = self.blocks(h)
        for up, size in zip(self.up, reversed(sizes)):
            # back to exactly the size this level had on the way down (odd sizes included), then convolve:
            # every output pixel sees the same number of inputs, so no checkerboard
            h = up(F.interpolate(h, size=tuple(size), mode="nearest"))
        return torch.tanh(self.head(h))


@register("style_network", "transform_net")
class TransformNetwork(StyleNetwork):
    """Johnson et al.'s image-transform network with instance norm and resize-convolution upsampling: a
    ``kernel``-pixel stem of ``width`` channels, ``downsamples`` stride-2 convolutions (doubling the width),
    ``res_blocks`` residual blocks, the way back up, a ``kernel``-pixel head. Any image size."""

    api_version = 1
    contract_options = {"width": 4, "res_blocks": 1}

    def __init__(self, width: int = 32, res_blocks: int = 5, downsamples: int = 2, kernel: int = 9):
        for name, v, low in (("width", width, 1), ("res_blocks", res_blocks, 0), ("downsamples", downsamples, 0),
                             ("kernel", kernel, 1)):
            if v < low:
                raise ValueError(f"{name} must be >= {low}, got {v}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (the output keeps the input's size), got {kernel}")
        self.width, self.res_blocks, self.downsamples, self.kernel = width, res_blocks, downsamples, kernel

    def build(self) -> TransformNet:
        return TransformNet(self.width, self.res_blocks, self.downsamples, self.kernel)
