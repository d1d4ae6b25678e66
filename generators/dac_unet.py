"""``dac_unet``: a U-Net of DAC encoder / decoder blocks with skips between mirrored levels.

    x (B, 1, T) -> pad to a multiple of total_stride -> [patch: (B, P, T / P)]
      -> stem conv k7 (C0) -> DownBlock_i (C_i -> C_i+1, / s_i) ... -> bottleneck units (C_n)
      -> UpBlock_i (C_i+1 -> C_i, * s_i, + skip_i) ... -> Snake -> conv k7 (P) -> [tanh]
      -> [un-patch] -> crop -> [+ x when residual] -> (B, 1, T)

With ``gain_path`` (residual only) the bottleneck also predicts a smooth gain envelope
``a`` (conv k3 to one channel, held over each bottleneck frame, then a triangular
smoothing of two frames' width, so it is piecewise linear), and the output becomes
``y = x (1 + a) + G(x)``. Its conv starts at zero too. A round trip through a phase
vocoder loses energy (torchaudio's and librosa's keep 20-35 % of it, Rubber Band 30-60 %,
measured on the bundled recordings): a gain envelope restores that directly, where a
correction ``G(x)`` built by convolutions has to learn a product of signal and level.

``skip_i`` is the output of DownBlock_i's residual units (before its strided conv).
Patching folds P consecutive samples into P channels, so every level runs at 1/P of
the rate: roughly 1/P of the memory and time of the same net without it.
Widths: ``C_i = min(channels * 2**i, max_channels)``; with ``max_channels`` large
enough every DownBlock / UpBlock is exactly DAC's EncoderBlock / DecoderBlock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .band_gain import BandGainConfig, aligned_stride
from .base import Generator
from .layers import DownBlock, ResidualUnit, SkipMode, Snake1d, UpBlock, WNConv1d, units_span
from .receptive import Span, conv_span, patch_span, repeat_span, union


@dataclass
class DacUNetConfig:
    name: str = "dac_unet"
    channels: int = 64  # width of the first level; doubles per level
    max_channels: int = 1024  # cap on the doubling
    strides: list[int] = field(default_factory=lambda: [2, 4, 8, 8])
    dilations: list[int] = field(default_factory=lambda: [1, 3, 9])  # residual units of one block
    depth: int = 1  # the dilation cycle repeats this many times in every Down/UpBlock
    bottleneck_depth: int = 1  # dilation cycles of residual units at the bottom
    kernel_size: int = 7
    skip: SkipMode = "add"
    patch_size: int = 1  # 1 = off; 2 = fold sample pairs into channels ("patching")
    output_activation: Literal["tanh", "none"] = "tanh"  # on the output, or on the correction when residual
    residual: bool = False  # y = x + G(x), last conv zero-initialised: an untrained model is the identity
    gain_path: bool = False  # residual only: y = x (1 + a) + G(x), a smooth gain envelope from the bottleneck
    band_gain: Optional[BandGainConfig] = None  # residual only: band gains from a degradation encoder first

    def __post_init__(self):
        if not self.strides or any(s < 2 for s in self.strides):
            raise ValueError(f"strides: {self.strides}: needs at least one level, every stride >= 2")
        if self.channels < 1 or self.max_channels < self.channels:
            raise ValueError("channels / max_channels: need 1 <= channels <= max_channels")
        if not self.dilations or any(d < 1 for d in self.dilations) or self.depth < 1 or self.bottleneck_depth < 0:
            raise ValueError("dilations / depth / bottleneck_depth: need positive dilations, depth >= 1")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: {self.kernel_size} must be odd")
        if self.patch_size < 1:
            raise ValueError("patch_size: must be >= 1")
        if self.gain_path and not self.residual:
            raise ValueError("gain_path: needs residual: true (the gain scales the input that is passed through)")
        if self.band_gain is not None and not self.residual:
            raise ValueError("band_gain: needs residual: true (the U-Net corrects the band-gained input)")

    @property
    def widths(self) -> list[int]:
        return [min(self.channels * 2**i, self.max_channels) for i in range(len(self.strides) + 1)]

    @property
    def total_stride(self) -> int:
        """Inputs are padded to, and chunks start on, multiples of this (the band gains' hop divides it)."""
        return aligned_stride(self.unet_stride, self.band_gain)

    @property
    def unet_stride(self) -> int:
        return self.patch_size * math.prod(self.strides)


class DacUNet(Generator):
    """``(B, 1, T) -> (B, 1, T)`` for any ``T >= 1``; predicts the clean signal (or, when residual, its difference from the input)."""

    def __init__(self, cfg: DacUNetConfig):
        super().__init__()
        self.cfg = cfg
        self.io_channels = cfg.patch_size  # signal-side width of stem and head (AdamW, not Muon)
        widths, dil, k, p = cfg.widths, cfg.dilations * cfg.depth, cfg.kernel_size, cfg.patch_size
        self.stem = WNConv1d(p, widths[0], kernel_size=7, padding=3)
        self.downs = nn.ModuleList(
            DownBlock(widths[i], widths[i + 1], s, dil, k) for i, s in enumerate(cfg.strides))
        self.bottleneck = nn.Sequential(
            *(ResidualUnit(widths[-1], d, k) for d in cfg.dilations * cfg.bottleneck_depth))
        self.ups = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], s, dil, k, cfg.skip) for i, s in enumerate(cfg.strides))
        self.head = nn.Sequential(Snake1d(widths[0]), WNConv1d(widths[0], p, kernel_size=7, padding=3))
        if cfg.residual:
            self.zero_output(self.head[1])
        self.gain_head = None
        self.build_band_gain(cfg.band_gain)
        if cfg.gain_path:
            self.build_gain_path(widths[-1], WNConv1d(widths[-1], 1, kernel_size=3, padding=1))

    def restore(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, T) -> (B, 1, T)
        """The U-Net (with its gain path and residual output) on the band-gained input (``Generator.forward``)."""
        length = x.shape[-1]
        p = self.cfg.patch_size
        h = F.pad(x, (0, -length % self.cfg.total_stride))
        h = rearrange(h, "b 1 (t p) -> b p t", p=p)  # patching: P consecutive samples -> P channels
        h = self.stem(h)  # -> (B, C0, L0)
        skips = []
        for down in self.downs:
            h, skip = down.forward_with_skip(h)  # (B, C_i, L_i) -> (B, C_i+1, L_i / s_i)
            skips.append(skip if self.cfg.skip != "none" else None)
        h = self.bottleneck(h)
        gain = self.gain_envelope(h) if self.gain_head is not None else None  # (B, 1, T')
        for up, skip in zip(reversed(self.ups), reversed(skips)):
            h = up(h, skip)  # (B, C_i+1, L_i+1) -> (B, C_i, L_i+1 * s_i)
        h = self.head(h)  # -> (B, P, L0)
        if self.cfg.output_activation == "tanh":
            h = torch.tanh(h)
        y = rearrange(h, "b p t -> b 1 (t p)")[..., :length]  # un-patching, then the crop to (B, 1, T)
        if gain is not None:
            return x * (1 + gain[..., :length]) + y
        return x + y if self.cfg.residual else y


    def _level_span(self, i: int, s: Span) -> Span:
        """Span on DownBlock i's input of a span on UpBlock i's output."""
        up, down = self.ups[i], self.downs[i]
        s = up.units_span(s)
        deep = up.up_span(s)  # on UpBlock i's input = level i + 1
        if i + 1 == len(self.downs):
            deep = units_span(self.bottleneck, deep)
        else:
            deep = self._level_span(i + 1, deep)
        deep = down.down_span(deep)  # on the skip features of level i
        s = union(deep, s) if self.cfg.skip != "none" else deep
        return down.units_span(s)

    def _bottleneck_span(self, s: Span) -> Span:
        """Span on the input of a span on the bottleneck's output."""
        s = units_span(self.bottleneck, s)
        for down in reversed(self.downs):
            s = down.units_span(down.down_span(s))
        return patch_span(conv_span(s, 7, 1, 3), self.cfg.patch_size)  # stem conv, patch

    def input_span(self, s: Span) -> Span:
        p = self.cfg.patch_size
        out = s
        s = conv_span(repeat_span(s, p), 7, 1, 3)  # un-patch, head conv
        s = self._level_span(0, s)
        s = patch_span(conv_span(s, 7, 1, 3), p)  # stem conv, patch
        if self.gain_head is not None:
            s = union(s, self._bottleneck_span(self.gain_frames_span(out)))
        return self.band_gain_span(s, out)
