"""``mpd``: HiFi-GAN multi-period discriminator, DAC's layout (``dac.model.discriminator.MPD``).

Per period p: reflect-pad T up to a multiple of p (a full period when T already is one,
as DAC), fold to ``(B, 1, T / p, p)``, then 2-D convs with kernel (k, 1) along time:
channels 1 -> 32 -> 128 -> 512 -> 1024 (stride (3, 1)) -> 1024 (stride 1), LeakyReLU 0.1,
and a (3, 1) conv to one logit channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from einops import rearrange

from .common import DiscriminatorFamily, reflect_pad, run_stack, wn_conv


@dataclass
class MPDConfig:
    name: str = "mpd"
    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    channels: list[int] = field(default_factory=lambda: [32, 128, 512, 1024, 1024])
    kernel_size: int = 5
    stride: int = 3  # every conv but the last
    normalize: bool = True  # remove DC and peak-normalise to 0.8 first, as DAC

    def __post_init__(self):
        if not self.periods or any(p < 1 for p in self.periods) or len(set(self.periods)) != len(self.periods):
            raise ValueError(f"periods: {self.periods}: need distinct positive periods")
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ValueError(f"channels: {self.channels}: need >= 2 positive widths")
        if self.kernel_size % 2 == 0 or self.stride < 1:
            raise ValueError("kernel_size / stride: need an odd kernel and stride >= 1")


class PeriodDiscriminator(nn.Module):
    """One period: ``(B, 1, T) -> [fmap_1 .. fmap_n, logits (B, 1, L, p)]``."""

    def __init__(self, period: int, channels: list[int], kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        c_in = [1] + channels[:-1]
        strides = [stride] * (len(channels) - 1) + [1]
        self.convs = nn.ModuleList(
            wn_conv(nn.Conv2d(i, o, (kernel_size, 1), (s, 1), padding=(kernel_size // 2, 0)))
            for i, o, s in zip(c_in, channels, strides))
        self.conv_post = wn_conv(nn.Conv2d(channels[-1], 1, (3, 1), padding=(1, 0)), act=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        length, p = x.shape[-1], self.period
        x = reflect_pad(x, 0, p - length % p)
        x = rearrange(x, "b c (t p) -> b c t p", p=p)  # period folding: column j holds samples j, j + p, ...
        return run_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(DiscriminatorFamily):
    """Sub-discriminators ``mpd_<p>``, one per period."""

    def __init__(self, cfg: MPDConfig):
        subs = [PeriodDiscriminator(p, list(cfg.channels), cfg.kernel_size, cfg.stride) for p in cfg.periods]
        super().__init__(cfg, subs, [f"mpd_{p}" for p in cfg.periods])
