"""DAC building blocks with the modern weight-norm API.

The layer layout follows descript-audio-codec (``dac.nn.layers``, ``dac.model.dac``)
module for module, so a DAC state dict loads after ``from_dac_state_dict``.
The one difference: weight norm is ``torch.nn.utils.parametrizations.weight_norm``
(parameters ``parametrizations.weight.original0`` = magnitude g, ``original1`` =
direction v) instead of DAC's deprecated ``weight_norm`` (``weight_g`` / ``weight_v``),
which cannot be deep-copied after a forward pass (EMA) and warns on every build.

    ResidualUnit(dim, d)           # (B, C, T) -> (B, C, T)
    DownBlock(c_in, c_out, s)      # (B, c_in, T) -> (B, c_out, T // s)        = DAC EncoderBlock
    UpBlock(c_in, c_out, s, skip)  # (B, c_in, T) [+ skip] -> (B, c_out, T * s) = DAC DecoderBlock
"""
from __future__ import annotations

import functools
import math
from typing import Literal, Optional

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

from .receptive import Span, conv_span, conv_transpose_span

SkipMode = Literal["add", "concat", "none"]

WN_MAGNITUDE = "parametrizations.weight.original0"  # DAC: weight_g
WN_DIRECTION = "parametrizations.weight.original1"  # DAC: weight_v


def from_dac_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename DAC's ``weight_g`` / ``weight_v`` keys to the parametrization names used here."""
    out = {}
    for key, value in state.items():
        if key.endswith("weight_g"):
            key = key[: -len("weight_g")] + WN_MAGNITUDE
        elif key.endswith("weight_v"):
            key = key[: -len("weight_v")] + WN_DIRECTION
        out[key] = value
    return out


def weight_normed(module: nn.Module, zero_bias: bool = False) -> nn.Module:
    """``module`` with its ``weight`` split into magnitude ``original0`` and direction ``original1``."""
    if zero_bias and getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return weight_norm(module)


# DAC's generator zeroes conv biases at init (its trunc-normal weight init is a no-op
# under weight norm, so torch's default weight init is what DAC trains from too).
def WNConv1d(*args, **kwargs) -> nn.Conv1d:
    return weight_normed(nn.Conv1d(*args, **kwargs), zero_bias=True)


def WNConvTranspose1d(*args, **kwargs) -> nn.ConvTranspose1d:
    return weight_normed(nn.ConvTranspose1d(*args, **kwargs), zero_bias=True)


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(B, C, T), (1, C, 1) -> (B, C, T)``: x + sin²(αx) / (α + 1e-9) (DAC's ``dac.nn.layers.snake``)."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


@functools.cache
def fused_snake():
    """``snake`` compiled by inductor for any shape: forward and backward each become one loop over
    the tensor instead of five (about 4x faster on a CPU; compiling takes seconds, once per process)."""
    return torch.compile(snake, dynamic=True)


class Snake1d(nn.Module):
    """x + sin²(αx) / (α + 1e-9), one α per channel; ``alpha`` is ``(1, C, 1)`` as in DAC.

    ``fused = True`` (see ``fuse_activations``) computes it with the compiled ``fused_snake``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        return (fused_snake() if self.fused else snake)(x, self.alpha)


def fuse_activations(model: nn.Module) -> int:
    """Switch every ``Snake1d`` of ``model`` to the compiled activation; returns how many there are."""
    found = [m for m in model.modules() if isinstance(m, Snake1d)]
    for m in found:
        m.fused = True
    return len(found)


class ResidualUnit(nn.Module):
    """Snake -> conv k7 dilation d -> Snake -> conv k1, added to the input."""

    def __init__(self, dim: int, dilation: int = 1, kernel_size: int = 7):
        super().__init__()
        self.dilation, self.kernel_size = dilation, kernel_size
        pad = (kernel_size - 1) * dilation // 2
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=kernel_size, dilation=dilation, padding=pad),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        return x + self.block(x)

    def span(self, s: Span) -> Span:
        pad = (self.kernel_size - 1) * self.dilation // 2
        return conv_span(s, self.kernel_size, 1, pad, self.dilation)


def residual_units(dim: int, dilations: list[int], kernel_size: int = 7) -> list[ResidualUnit]:
    return [ResidualUnit(dim, d, kernel_size) for d in dilations]


def units_span(units, s: Span) -> Span:
    for u in reversed(list(units)):
        s = u.span(s)
    return s


class DownBlock(nn.Module):
    """Residual units at ``c_in`` -> Snake -> conv kernel 2s stride s to ``c_out``.

    ``(B, c_in, T) -> (B, c_out, T // s)`` for ``T`` a multiple of ``s``. With
    ``c_out = 2 c_in`` and dilations (1, 3, 9) this is DAC's ``EncoderBlock(c_out, s)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, dilations=(1, 3, 9), kernel_size: int = 7):
        super().__init__()
        self.stride = stride
        self.n_units = len(dilations)
        self.block = nn.Sequential(
            *residual_units(c_in, list(dilations), kernel_size),
            Snake1d(c_in),
            WNConv1d(c_in, c_out, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward_with_skip(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(downsampled (B, c_out, T // s), features before downsampling (B, c_in, T))``."""
        for unit in self.block[: self.n_units]:
            x = unit(x)
        skip = x
        for layer in self.block[self.n_units:]:
            x = layer(x)
        return x, skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)

    def down_span(self, s: Span) -> Span:
        """Span on the skip features (before the strided conv) of a span on the output."""
        st = self.stride
        return conv_span(s, 2 * st, st, math.ceil(st / 2))

    def units_span(self, s: Span) -> Span:
        return units_span(self.block[: self.n_units], s)


class UpBlock(nn.Module):
    """Snake -> transposed conv kernel 2s stride s to ``c_out`` -> [merge skip] -> residual units.

    ``(B, c_in, T) -> (B, c_out, T * s)``. The skip ``(B, c_out, T * s)`` is added, or
    concatenated and mixed back to ``c_out`` by a 1x1 conv. With ``c_in = 2 c_out``,
    even ``s``, dilations (1, 3, 9) and no skip this is DAC's ``DecoderBlock(c_in, c_out, s)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, dilations=(1, 3, 9), kernel_size: int = 7,
                 skip: SkipMode = "none"):
        super().__init__()
        self.stride, self.skip = stride, skip
        self.block = nn.Sequential(
            Snake1d(c_in),
            # output_padding makes odd strides exact too (DAC's gives T * s - 1 there)
            WNConvTranspose1d(c_in, c_out, kernel_size=2 * stride, stride=stride,
                              padding=math.ceil(stride / 2), output_padding=stride % 2),
            *residual_units(c_out, list(dilations), kernel_size),
        )
        self.merge = WNConv1d(2 * c_out, c_out, kernel_size=1) if skip == "concat" else None

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.block[1](self.block[0](x))  # (B, c_in, T) -> (B, c_out, T * s)
        if skip is not None and self.skip == "add":
            x = x + skip
        elif skip is not None and self.skip == "concat":
            x = self.merge(torch.cat([x, skip], dim=1))  # (B, 2 c_out, T s) -> (B, c_out, T s)
        for unit in self.block[2:]:
            x = unit(x)
        return x

    def units_span(self, s: Span) -> Span:
        return units_span(self.block[2:], s)

    def up_span(self, s: Span) -> Span:
        """Span on the block input of a span on the transposed conv's output."""
        st = self.stride
        return conv_transpose_span(s, 2 * st, st, math.ceil(st / 2))
