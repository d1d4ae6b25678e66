"""Pieces shared by the discriminator families.

A family (``mpd``, ``mrd``, ``msd``) holds several sub-discriminators in ``subs``
(one per period / window / rate) with one name each in ``names``. A sub-discriminator
returns DAC's list of feature maps whose last entry is the logits map; the family
turns that into ``(logits, feature_maps)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.nn.utils.parametrizations import weight_norm

Output = list[tuple[torch.Tensor, list[torch.Tensor]]]


def wn_conv(conv: nn.Module, act: bool = True) -> nn.Module:
    """Weight-normed ``conv``, followed by LeakyReLU(0.1) when ``act`` (DAC's discriminator layer)."""
    conv = weight_norm(conv)
    return nn.Sequential(conv, nn.LeakyReLU(0.1)) if act else conv


def normalize_peak(x: torch.Tensor) -> torch.Tensor:
    """DAC's discriminator input: remove DC, peak-normalise to 0.8. ``(B, C, T) -> (B, C, T)``."""
    x = x - x.mean(dim=-1, keepdim=True)
    return 0.8 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-9)


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """``F.pad(x, (left, right), mode="reflect")`` that also works when a pad is >= the length.

    Longer pads keep reflecting (numpy's ``reflect``); a single sample is repeated.
    """
    length = x.shape[-1]
    if left < length and right < length:
        return F.pad(x, (left, right), mode="reflect")
    idx = torch.arange(-left, length + right, device=x.device)
    if length == 1:
        idx = torch.zeros_like(idx)
    else:
        period = 2 * (length - 1)
        idx = idx.remainder(period)
        idx = torch.where(idx >= length, period - idx, idx)
    return x.index_select(-1, idx)


def run_stack(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """DAC's sub-discriminator pass: every conv's output, then the logits of ``post``."""
    fmaps = []
    for layer in convs:
        x = layer(x)
        fmaps.append(x)
    fmaps.append(post(x))
    return fmaps


class DiscriminatorFamily(nn.Module):
    """Base of a registered discriminator: ``forward(x (B, 1, T)) -> list[(logits, feature_maps)]``.

    ``cfg.normalize``: remove DC and peak-normalise the input first (DAC's preprocessing).
    """

    def __init__(self, cfg, subs: list[nn.Module], names: list[str]):
        super().__init__()
        self.cfg, self.normalize = cfg, cfg.normalize
        self.subs = nn.ModuleList(subs)
        self.names = names

    def discriminate(self, x: torch.Tensor) -> Output:
        """Run every sub-discriminator on an already prepared input."""
        out = []
        for sub in self.subs:
            fmaps = sub(x)
            out.append((fmaps[-1], fmaps[:-1]))
        return out

    def forward(self, x: torch.Tensor) -> Output:
        return self.discriminate(normalize_peak(x) if self.normalize else x)

    def load_dac_subs(self, dac_subs: list[nn.Module]) -> None:
        """Copy weights from DAC's matching sub-discriminators (``MPD``, ``MRD`` or ``MSD`` modules)."""
        if len(dac_subs) != len(self.subs):
            raise ValueError(f"{type(self).__name__}: {len(self.subs)} sub-discriminators, got {len(dac_subs)} DAC ones")
        for sub, ref in zip(self.subs, dac_subs):
            sub.load_state_dict(ref.state_dict())  # torch maps DAC's weight_g / weight_v keys itself
