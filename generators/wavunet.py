"""``wavunet``: the HiFi++ WaveUNet (``MultiScaleResnet``), sized by config.

    x (B, 1, T) -> pad to a multiple of scale ** (levels - 1)
      -> conv k5 (W0)
      -> level i:  skip_i = h; h = ResBlock(W_i) -> conv k=s stride s (W_i+1)
      -> bottom:   ResBlock(W_n)
      -> level i:  h = nearest x s -> conv 1x1 (W_i) -> ResBlock(W_i) -> conv 1x1 over cat(skip_i, h)
      -> conv k5 (1) -> crop -> [residual: + x, or with gain_path x (1 + a) +] -> (B, 1, T)

A ResBlock is ``depth`` residual layers ``h + conv_k(LeakyReLU(h))``. HiFi++ uses widths
10, 20, 40, 80, depth 4, kernel 5, scale 4 at 16-22 kHz; configs/gan_wavunet.yaml
widens and deepens it for 48 kHz.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from .band_gain import BandGainConfig, aligned_stride
from .base import Generator
from .receptive import Span, conv_span, repeat_span, union


@dataclass
class WavUNetConfig:
    name: str = "wavunet"
    widths: list[int] = field(default_factory=lambda: [10, 20, 40, 80])  # per level, top to bottom
    depth: int = 4  # residual convs per ResBlock
    kernel_size: int = 5
    scale: int = 4  # down / up factor between levels
    negative_slope: float = 0.01  # LeakyReLU (torch default, as HiFi++)
    norm: Literal["weight", "none"] = "weight"
    output_activation: Literal["tanh", "none"] = "none"  # on the output, or on the correction when residual
    residual: bool = False  # y = x + G(x), last conv zero-initialised: an untrained model is the identity
    gain_path: bool = False  # residual only: y = x (1 + a) + G(x), a smooth gain envelope from the bottom level
    band_gain: Optional[BandGainConfig] = None  # residual only: band gains from a degradation encoder first

    def __post_init__(self):
        if len(self.widths) < 2 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths: {self.widths}: needs >= 2 positive widths")
        if self.depth < 1 or self.kernel_size % 2 == 0 or self.scale < 2:
            raise ValueError("depth / kernel_size / scale: need depth >= 1, an odd kernel, scale >= 2")
        if self.gain_path and not self.residual:
            raise ValueError("gain_path: needs residual: true (the gain scales the input that is passed through)")
        if self.band_gain is not None and not self.residual:
            raise ValueError("band_gain: needs residual: true (the U-Net corrects the band-gained input)")

    @property
    def total_stride(self) -> int:
        """Inputs are padded to, and chunks start on, multiples of this (the band gains' hop divides it)."""
        return aligned_stride(self.unet_stride, self.band_gain)

    @property
    def unet_stride(self) -> int:
        return self.scale ** (len(self.widths) - 1)


def _conv(cfg: WavUNetConfig, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv1d:
    conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=padding)
    return weight_norm(conv) if cfg.norm == "weight" else conv


class ResBlock(nn.Module):
    """``depth`` x ``h + conv_k(LeakyReLU(h))``: ``(B, C, T) -> (B, C, T)``."""

    def __init__(self, cfg: WavUNetConfig, width: int):
        super().__init__()
        k = cfg.kernel_size
        self.kernel_size = k
        self.layers = nn.ModuleList(
            nn.Sequential(nn.LeakyReLU(cfg.negative_slope), _conv(cfg, width, width, k, padding=k // 2))
            for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x

    def span(self, s: Span) -> Span:
        for _ in self.layers:
            s = conv_span(s, self.kernel_size, 1, self.kernel_size // 2)
        return s


class WavUNet(Generator):
    """``(B, 1, T) -> (B, 1, T)`` for any ``T >= 1``."""

    def __init__(self, cfg: WavUNetConfig):
        super().__init__()
        self.cfg = cfg
        w, s, k = cfg.widths, cfg.scale, cfg.kernel_size
        n = len(w) - 1
        self.stem = _conv(cfg, 1, w[0], k, padding=k // 2)
        self.enc = nn.ModuleList(ResBlock(cfg, w[i]) for i in range(n))
        self.downs = nn.ModuleList(_conv(cfg, w[i], w[i + 1], s, stride=s) for i in range(n))
        self.bottom = ResBlock(cfg, w[n])
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=s, mode="nearest"), _conv(cfg, w[i + 1], w[i], 1))
            for i in range(n))
        self.dec = nn.ModuleList(ResBlock(cfg, w[i]) for i in range(n))
        self.merges = nn.ModuleList(_conv(cfg, 2 * w[i], w[i], 1) for i in range(n))
        self.head = _conv(cfg, w[0], 1, k, padding=k // 2)
        if cfg.residual:
            self.zero_output(self.head)
        self.gain_head = None
        self.build_band_gain(cfg.band_gain)
        if cfg.gain_path:  # see generators/base.py
            self.build_gain_path(w[n], _conv(cfg, w[n], 1, 3, padding=1))

    def restore(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, T) -> (B, 1, T)
        """The U-Net (with its gain path and residual output) on the band-gained input (``Generator.forward``)."""
        length = x.shape[-1]
        h = self.stem(F.pad(x, (0, -length % self.cfg.total_stride)))  # (B, W0, T')
        skips = []
        for enc, down in zip(self.enc, self.downs):
            skips.append(h)
            h = down(enc(h))  # (B, W_i, L) -> (B, W_i+1, L / s)
        h = self.bottom(h)
        gain = self.gain_envelope(h) if self.gain_head is not None else None  # (B, 1, T')
        for i in reversed(range(len(self.ups))):
            h = self.dec[i](self.ups[i](h))  # (B, W_i+1, L) -> (B, W_i, L * s)
            h = self.merges[i](torch.cat([skips[i], h], dim=1))  # (B, 2 W_i, L s) -> (B, W_i, L s)
        h = self.head(h)
        if self.cfg.output_activation == "tanh":
            h = torch.tanh(h)
        if gain is not None:
            return x * (1 + gain[..., :length]) + h[..., :length]
        return x + h[..., :length] if self.cfg.residual else h[..., :length]

    def _level_span(self, i: int, s: Span) -> Span:
        """Span on level i's input (= skip_i) of a span on level i's merged output."""
        deep = repeat_span(self.dec[i].span(s), self.cfg.scale)  # ResBlock, 1x1 conv, nearest
        if i + 1 == len(self.enc):
            deep = self.bottom.span(deep)
        else:
            deep = self._level_span(i + 1, deep)
        deep = conv_span(deep, self.cfg.scale, self.cfg.scale)  # strided down conv
        return union(self.enc[i].span(deep), s)

    def _bottom_span(self, s: Span) -> Span:
        """Span on the input of a span on the bottom ResBlock's output."""
        s = self.bottom.span(s)
        for i in reversed(range(len(self.enc))):
            s = self.enc[i].span(conv_span(s, self.cfg.scale, self.cfg.scale))
        k = self.cfg.kernel_size
        return conv_span(s, k, 1, k // 2)

    def input_span(self, s: Span) -> Span:
        k = self.cfg.kernel_size
        out = s
        s = self._level_span(0, conv_span(s, k, 1, k // 2))
        s = conv_span(s, k, 1, k // 2)
        if self.gain_head is not None:
            s = union(s, self._bottom_span(self.gain_frames_span(out)))
        return self.band_gain_span(s, out)
