"""``mrd``: DAC's multi-resolution complex-STFT discriminator (``dac.model.discriminator.MRD``).

Per window W (hop H = W / 4): complex STFT with a periodic Hann window, real and imag as
two channels ``(B, 2, frames, W / 2 + 1)``, split into frequency bands (default edges
0, .1, .25, .5, .75, 1 of the bins), a conv stack per band (kernel (3, 9), strides
1, 2, 2, 2 along frequency, then (3, 3); LeakyReLU 0.1), bands concatenated along
frequency, one (3, 3) conv to the logits.

Framing equals audiotools' ``match_stride`` STFT that DAC uses (reflect-pad
``(W - H) / 2`` each side plus up to a multiple of H, centred STFT, drop 2 frames at
each end), computed directly: the dropped frames are the only ones that read the
centring pad, so one reflect pad and an uncentred STFT give the same frames,
``ceil(T / H)`` of them, without building an AudioSignal per call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .common import DiscriminatorFamily, reflect_pad, wn_conv


@dataclass
class MRDConfig:
    name: str = "mrd"
    window_lengths: list[int] = field(default_factory=lambda: [2048, 1024, 512])
    hop_factor: float = 0.25
    band_edges: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    channels: int = 32
    normalize: bool = True  # remove DC and peak-normalise to 0.8 first, as DAC

    def __post_init__(self):
        if not self.window_lengths or len(set(self.window_lengths)) != len(self.window_lengths):
            raise ValueError(f"window_lengths: {self.window_lengths}: need distinct window lengths")
        for w in self.window_lengths:
            hop = int(w * self.hop_factor)
            if hop < 1 or (w - hop) % 2:
                raise ValueError(f"hop_factor: window {w} gives hop {hop}; need hop >= 1 and W - hop even")
        e = self.band_edges
        if len(e) < 2 or e[0] != 0.0 or e[-1] != 1.0 or any(a >= b for a, b in zip(e, e[1:])):
            raise ValueError(f"band_edges: {e}: need increasing edges from 0.0 to 1.0")
        for w in self.window_lengths:
            bins = [int(a * (w // 2 + 1)) for a in e]
            if any(a >= b for a, b in zip(bins, bins[1:])):
                raise ValueError(f"window_lengths: window {w} leaves a band of band_edges {e} empty")
        if self.channels < 1:
            raise ValueError("channels: must be positive")


class STFTDiscriminator(nn.Module):
    """One resolution: ``(B, 1, T) -> [band fmaps (5 per band), logits (B, 1, frames, F')]``."""

    def __init__(self, window_length: int, hop_factor: float, band_edges: list[float], channels: int):
        super().__init__()
        self.window_length = window_length
        self.hop_length = int(window_length * hop_factor)
        n_bins = window_length // 2 + 1
        self.bands = [(int(a * n_bins), int(b * n_bins)) for a, b in zip(band_edges, band_edges[1:])]
        self.register_buffer("window", torch.hann_window(window_length), persistent=False)
        ch = channels

        def stack() -> nn.ModuleList:
            return nn.ModuleList([
                wn_conv(nn.Conv2d(2, ch, (3, 9), (1, 1), padding=(1, 4))),
                wn_conv(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
                wn_conv(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
                wn_conv(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
                wn_conv(nn.Conv2d(ch, ch, (3, 3), (1, 1), padding=(1, 1))),
            ])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.conv_post = wn_conv(nn.Conv2d(ch, 1, (3, 3), (1, 1), padding=(1, 1)), act=False)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, T) -> (B, 2, ceil(T / H), W / 2 + 1)``: real and imaginary parts."""
        w, hop = self.window_length, self.hop_length
        length = x.shape[-1]
        pad = (w - hop) // 2
        x = reflect_pad(x, pad, pad + math.ceil(length / hop) * hop - length)
        spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft=w, hop_length=hop, window=self.window,
                          center=False, return_complex=True)  # (B, F, frames)
        return torch.view_as_real(spec).permute(0, 3, 2, 1)  # (B, F, frames, 2) -> (B, 2, frames, F)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        spec = self.spectrogram(x)
        fmaps, outs = [], []
        for (lo, hi), stack in zip(self.bands, self.band_convs):
            h = spec[..., lo:hi]
            for layer in stack:
                h = layer(h)
                fmaps.append(h)
            outs.append(h)
        fmaps.append(self.conv_post(torch.cat(outs, dim=-1)))
        return fmaps


class MultiResolutionDiscriminator(DiscriminatorFamily):
    """Sub-discriminators ``mrd_<W>``, one per window length."""

    def __init__(self, cfg: MRDConfig):
        subs = [STFTDiscriminator(w, cfg.hop_factor, list(cfg.band_edges), cfg.channels) for w in cfg.window_lengths]
        super().__init__(cfg, subs, [f"mrd_{w}" for w in cfg.window_lengths])
