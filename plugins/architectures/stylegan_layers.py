"""Building blocks of the StyleGAN2-like architecture: equalized-lr layers, FIR resampling, modulated convs.

Design choices (and why):
- Equalized learning rate: weights are stored as N(0, 1) and scaled by 1/sqrt(fan_in) at run time, so Adam's
  per-parameter step is the same relative size for every layer (Karras et al., ProGAN).
- Modulation is *not* fused into a grouped convolution: we scale the input by the style, run one ordinary
  convolution with the shared weight, and scale the output by the demodulation coefficients. That is exactly the
  same arithmetic (a convolution is linear in each input channel), but it keeps cuDNN's fast dense kernels,
  works with channels_last and torch.compile, and needs no per-sample weight tensor (StyleGAN2-ADA trains the
  same way, ``fused_modconv=False``).
- Resampling uses the [1, 3, 3, 1] binomial filter of StyleGAN2 (anti-aliasing), as depthwise convolutions.
- Filters are non-persistent buffers: they follow ``.to(device)`` and compile as constants, but are not saved.
- ``conv_clamp`` (for fp16) clips activations as StyleGAN2-ADA does, so penalties' double backward stays finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def binomial_filter() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return (k / k.sum()).view(1, 1, 4, 4)


def blur(x: torch.Tensor, f: torch.Tensor, padding: int, stride: int = 1, gain: float = 1.0) -> torch.Tensor:
    """Depthwise FIR filter (``f`` is ``[1, 1, 4, 4]``, symmetric, so no flip is needed)."""
    c = x.shape[1]
    w = f.to(x.dtype).expand(c, 1, 4, 4)
    if gain != 1.0:
        w = w * gain
    return F.conv2d(x, w, padding=padding, stride=stride, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling: zero insertion and the 4x4 filter in one transposed depthwise conv (gain 4 keeps the mean)."""
    c = x.shape[1]
    return F.conv_transpose2d(x, (f.to(x.dtype) * 4).expand(c, 1, 4, 4), stride=2, padding=1, groups=c)


def lrelu_(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU in place. Callers fold the sqrt(2) He gain (which keeps the second moment of a leaky-ReLU'd unit
    Gaussian near 1) into the weights and biases before it: lrelu(g x) = g lrelu(x) for g > 0, so the result is
    the same with one memory pass fewer. In place is safe: no producer used here (conv, linear, addcmul, add)
    needs its own output for backward, and leaky ReLU's backward (also the double one) needs only its result."""
    return F.leaky_relu_(x, 0.2)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized lr; ``lr_mul`` slows a layer down (mapping network: 0.01)."""

    def __init__(self, in_f: int, out_f: int, act: bool = False, lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_f, in_f) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_f,), float(bias_init)) / lr_mul)
        self.weight_gain, self.bias_gain, self.act = lr_mul / math.sqrt(in_f), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = SQRT2 if self.act else 1.0
        b = self.bias * (self.bias_gain * g) if self.bias_gain * g != 1 else self.bias
        x = F.linear(x, self.weight * (self.weight_gain * g), b)
        return lrelu_(x) if self.act else x


class EqualConv2d(nn.Module):
    """Convolution with equalized lr, optional 2x downsampling (blur, then strided conv), activation and clamp."""

    def __init__(self, in_ch: int, out_ch: int, k: int, act: bool = True, bias: bool = True, down: bool = False,
                 clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_ch * k * k)
        self.k, self.act, self.down, self.clamp = k, act, down, clamp
        if down:
            self.register_buffer("filter", binomial_filter(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        g = gain * SQRT2 if self.act else gain  # output gain folded into weight and bias (see lrelu_)
        w = self.weight * (self.weight_gain * g)
        b = self.bias * g if self.bias is not None and g != 1 else self.bias
        if not self.down:
            x = F.conv2d(x, w, b, padding=self.k // 2)
        elif self.k == 1:  # blur with stride 2 (filter centred on each 2x2 cell), then 1x1
            x = F.conv2d(blur(x, self.filter, padding=1, stride=2), w, b)
        else:  # blur to H+1, then a 3x3 stride-2 conv lands on the centres of the 2x2 cells: H/2
            x = F.conv2d(blur(x, self.filter, padding=2), w, b, stride=2)
        if self.act:
            x = lrelu_(x)
        if self.clamp is not None:
            x = x.clamp(-self.clamp * gain, self.clamp * gain)
        return x


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution (StyleGAN2). ``w`` -> per-input-channel styles (affine, bias 1) that scale
    the input; with ``demodulate`` each output channel is divided by the norm of its effective (style-scaled)
    weight, so a unit-variance input gives a unit-variance output whatever the style. ``up``: 2x transposed conv
    followed by the binomial filter."""

    def __init__(self, in_ch: int, out_ch: int, k: int, w_dim: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.weight_gain = 1 / math.sqrt(in_ch * k * k)
        self.k, self.demodulate, self.up = k, demodulate, up
        if up:
            self.register_buffer("filter", binomial_filter(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y, d = self.modulate(x, w)
        return y if d is None else y * d[:, :, None, None]

    def modulate(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution of the style-scaled input and, with ``demodulate``, the per-(sample, output channel)
        coefficients ``d`` that still have to multiply it (left to the caller so it can fuse them)."""
        styles = self.affine(w)  # [B, in]
        weight = self.weight * self.weight_gain
        if not self.demodulate:  # toRGB: scale styles instead (same as StyleGAN2-ADA)
            styles = styles * self.weight_gain
            weight = self.weight
        x = x * styles.to(x.dtype)[:, :, None, None]
        if self.up:  # (H-1)*2+3 = 2H+1, then the filter with padding 1 -> 2H
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = blur(x, self.filter, padding=1, gain=4.0)
        else:
            x = F.conv2d(x, weight, padding=self.k // 2)
        if not self.demodulate:
            return x, None
        # sum over (in, kh, kw) of (w * s)^2 = s^2 @ sum_k w^2: a [B, in] x [in, out] product, no big tensor.
        d = torch.rsqrt(styles.square() @ weight.square().sum((2, 3)).t() + 1e-8)  # [B, out]
        return x, d.to(x.dtype)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + per-pixel noise (learned strength) + bias + leaky ReLU (+ clamp)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, up: bool = False,
                 clamp: float | None = None, noise_seed: int = 0):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.resolution, self.clamp, self.noise_seed = resolution, clamp, noise_seed
        self._const_noise: torch.Tensor | None = None

    def const_noise(self, device) -> torch.Tensor:
        """Fixed noise for eval mode (samples, truncation): a pure function of the layer, identical on every rank
        and after a resume, and not a buffer, so DDP never broadcasts megabytes of it and checkpoints stay lean."""
        if self._const_noise is None or self._const_noise.device != torch.device(device):
            g = torch.Generator().manual_seed(1000 + self.noise_seed)
            n = torch.randn(1, 1, self.resolution, self.resolution, generator=g)
            self._const_noise = n.to(device)
        return self._const_noise

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y, d = self.conv.modulate(x, w)
        if self.training:
            noise = torch.randn(y.shape[0], 1, y.shape[2], y.shape[3], device=y.device, dtype=y.dtype)
        else:
            noise = self.const_noise(y.device).to(y.dtype)
        # sqrt(2) (lrelu_ gain) * (y * d + noise * strength + bias) in three full-size passes instead of seven:
        # the noise term is one channel, so only addcmul, add_ and the in-place activation touch every element.
        x = torch.addcmul(noise * (self.noise_strength * SQRT2).to(y.dtype), y, (d * SQRT2)[:, :, None, None])
        x = lrelu_(x.add_((self.bias * SQRT2).to(y.dtype)[:, None, None]))
        if self.clamp is not None:
            x = x.clamp(-self.clamp, self.clamp)
        return x


class ToRGB(nn.Module):
    """Modulated 1x1 conv to image channels, no demodulation (colours may follow the style freely)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.clamp = clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w).add_(self.bias.to(x.dtype)[:, None, None])  # conv's backward does not need its output
        return x.clamp(-self.clamp, self.clamp) if self.clamp is not None else x


def minibatch_std(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append the mean over features of the per-group standard deviation as one extra channel: D sees how
    varied a group of its inputs is, which penalises a G that collapses onto few outputs. The group is the largest
    divisor of the batch that is <= group_size, so odd batch sizes (R1 on a remainder batch) still work."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    while n % g:
        g -= 1
    y = x.reshape(g, n // g, c, h, w).float()
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # [n/g, c, h, w]
    y = y.mean((1, 2, 3)).to(x.dtype)  # [n/g]
    y = y.view(1, n // g, 1, 1, 1).expand(g, n // g, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y], 1)
