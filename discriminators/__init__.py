"""Discriminator registry: config name -> (nn.Module class, config dataclass).

Every discriminator maps ``(B, 1, T)`` to ``list[(logits, feature_maps)]``, one
entry per sub-discriminator, named in ``.names``; ``MultiDiscriminator``
concatenates those lists for a config's ``discriminators:`` list.

    mpd      multi-period (HiFi-GAN / DAC MPD)            names mpd_2, mpd_3, ...
    mrd      multi-resolution complex STFT (DAC MRD)      names mrd_2048, ...
    msd      multi-scale waveform (DAC MSD), optional     names msd_1, msd_2, ...

Weights of DAC's ``dac.model.discriminator.Discriminator`` load with ``load_dac_weights``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import DiscriminatorFamily, Output, normalize_peak
from .mpd import MPDConfig, MultiPeriodDiscriminator
from .mrd import MRDConfig, MultiResolutionDiscriminator
from .msd import MSDConfig, MultiScaleDiscriminator

REGISTRY: dict[str, tuple[type[nn.Module], type]] = {
    "mpd": (MultiPeriodDiscriminator, MPDConfig),
    "mrd": (MultiResolutionDiscriminator, MRDConfig),
    "msd": (MultiScaleDiscriminator, MSDConfig),
}


class MultiDiscriminator(nn.Module):
    """All configured families: ``(B, 1, T) -> list[(logits, feature_maps)]`` in ``names`` order.

    Families with ``normalize`` on share one DC-removed, peak-normalised copy of the input.
    """

    def __init__(self, cfgs: list):
        super().__init__()
        if not cfgs:
            raise ValueError(f"discriminators: need at least one section; known names: {sorted(REGISTRY)}")
        for cfg in cfgs:
            if cfg.name not in REGISTRY:
                raise ValueError(f"discriminator {cfg.name!r}: unknown; set its name to one of {sorted(REGISTRY)}")
        self.families = nn.ModuleList(REGISTRY[cfg.name][0](cfg) for cfg in cfgs)
        self.names: list[str] = [n for fam in self.families for n in fam.names]
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise ValueError(f"discriminators: sub-discriminator names {dup} appear twice; list each period/window once")

    def forward(self, x: torch.Tensor) -> Output:
        out: Output = []
        normalized = None
        for fam in self.families:
            if fam.normalize:
                if normalized is None:
                    normalized = normalize_peak(x)
                out += fam.discriminate(normalized)
            else:
                out += fam.discriminate(x)
        return out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_discriminator(cfgs: list) -> MultiDiscriminator:
    return MultiDiscriminator(cfgs)


def load_dac_weights(ours: MultiDiscriminator, dac_disc: nn.Module) -> None:
    """Copy a DAC ``Discriminator``'s weights into ``ours`` (same periods / rates / windows).

    DAC orders its sub-discriminators MPD, MSD, MRD; ours follow the config list.
    """
    from dac.model.discriminator import MPD, MRD, MSD

    kinds = {MultiPeriodDiscriminator: MPD, MultiScaleDiscriminator: MSD, MultiResolutionDiscriminator: MRD}
    for fam in ours.families:
        fam.load_dac_subs([d for d in dac_disc.discriminators if isinstance(d, kinds[type(fam)])])


__all__ = ["REGISTRY", "MultiDiscriminator", "build_discriminator", "load_dac_weights", "DiscriminatorFamily",
           "MPDConfig", "MRDConfig", "MSDConfig"]
