"""``msd``: multi-scale waveform discriminator, DAC's layout (``dac.model.discriminator.MSD``).

Per rate r: resample to 1/r of the rate (julius' sinc resampler, as audiotools uses in
DAC), then grouped 1-D convs: 1 -> 16 (k15) -> 64 -> 256 -> 1024 -> 1024 (k41, stride 4,
groups 4, 16, 64, 256) -> 1024 (k5), LeakyReLU 0.1, and a k3 conv to one logit channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import julius
import torch
import torch.nn as nn

from .common import DiscriminatorFamily, run_stack, wn_conv


@dataclass
class MSDConfig:
    name: str = "msd"
    rates: list[int] = field(default_factory=lambda: [1, 2, 4])  # downsampling factors
    channels: list[int] = field(default_factory=lambda: [16, 64, 256, 1024, 1024, 1024])
    groups: list[int] = field(default_factory=lambda: [4, 16, 64, 256])  # of the strided convs
    normalize: bool = True  # remove DC and peak-normalise to 0.8 first, as DAC

    def __post_init__(self):
        if not self.rates or any(r < 1 for r in self.rates) or len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates: {self.rates}: need distinct positive rates")
        c, g = self.channels, self.groups
        if len(c) < 2 or len(g) != len(c) - 2:
            raise ValueError(f"channels / groups: need >= 2 widths and one group count per strided conv "
                             f"({len(c) - 2}), got {c} / {g}")
        if any(c[i] % g[i] or c[i + 1] % g[i] for i in range(len(g))):
            raise ValueError(f"groups: {g} must divide the widths they connect ({c})")


class ScaleDiscriminator(nn.Module):
    """One rate: ``(B, 1, T) -> [fmap_1 .. fmap_n, logits (B, 1, T / r / 4**k)]``."""

    def __init__(self, rate: int, channels: list[int], groups: list[int]):
        super().__init__()
        self.rate = rate
        c = channels
        layers = [nn.Conv1d(1, c[0], 15, 1, padding=7)]
        layers += [nn.Conv1d(c[i], c[i + 1], 41, 4, groups=g, padding=20) for i, g in enumerate(groups)]
        layers += [nn.Conv1d(c[-2], c[-1], 5, 1, padding=2)]
        self.convs = nn.ModuleList(wn_conv(conv) for conv in layers)
        self.conv_post = wn_conv(nn.Conv1d(c[-1], 1, 3, 1, padding=1), act=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.rate > 1:
            # (B, 1, T) -> (B, 1, T // r); julius' own length, but at least one sample
            x = julius.resample_frac(x, self.rate, 1, output_length=max(1, x.shape[-1] // self.rate))
        return run_stack(self.convs, self.conv_post, x)


class MultiScaleDiscriminator(DiscriminatorFamily):
    """Sub-discriminators ``msd_<r>``, one per rate."""

    def __init__(self, cfg: MSDConfig):
        subs = [ScaleDiscriminator(r, list(cfg.channels), list(cfg.groups)) for r in cfg.rates]
        super().__init__(cfg, subs, [f"msd_{r}" for r in cfg.rates])
