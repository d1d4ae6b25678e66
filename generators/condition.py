"""What the user knows about the input: the shifter family and the shift, or "unknown".

Whoever made a round trip with a known tool knows what the degradation encoder has to
guess. This module turns that knowledge into an embedding the band-gain encoder adds to
its pooled context:

    family (B,) int64: 0 = unknown, i = FAMILIES[i - 1]
    shift (B,) semitones: the round trip's first leg, read only where the family is known
      -> e = E[family] + W [shift / 12, |shift| / 12] (known rows only)     (B, C)

``E`` (an embedding, row 0 the "unknown" value) and ``W`` start at zero, so an untrained
module adds nothing and a model trained with it behaves as one without it until it learns
from the labels. Training hides the labels of a share of crops (``data.unknown_fraction``)
and of every clean-input crop, so "unknown" is the model that has to guess, as without
conditioning. Conditioning on a degradation's known parameters is the non-blind case of
degradation-aware restoration (Zhang et al. 2018, SRMD; Wang et al. 2021, DASR, for the
blind one). The labels describe round trips, the only pairs with a clean reference; a file
shifted once loses about half a round trip's level, so a told model over-boosts it
(``gan/inference/enhance.py``, ``exp/c6_one_way_level.json``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

# the shifters a round trip can come from, in the order of the training data's labels
# (``gan.dsp.shifters.SHIFTERS``; a test pins that the two agree). Append only: a trained model's
# embedding rows are these labels, so a name moved or inserted would change what old checkpoints read.
FAMILIES = ("torchaudio", "librosa", "signalsmith", "rubberband", "wsola")
UNKNOWN = 0
SHIFT_SCALE = 12.0  # semitones: an octave maps to 1
MAX_SHIFT = 24.0  # semitones: the widest shift a recipe may train on (``data.degrade.shifts``)


@dataclass
class ConditionConfig:
    """``generator.band_gain.condition``: present (``{}``) = the encoder is told the family and shift when known."""


def family_index(name: str | None) -> int:
    """A shifter's name -> its label (``None`` or "unknown" -> 0); raises ValueError for other names.
    ``gan.data.loader.SHIFTER_LABELS`` gives the training data the same labels."""
    if name is None or name == "unknown":
        return UNKNOWN
    if name not in FAMILIES:
        raise ValueError(f"shifter family {name!r}: unknown; use one of {', '.join(FAMILIES)} or 'unknown'")
    return FAMILIES.index(name) + 1


def conditioned(cfg_generator) -> bool:
    """Whether a generator config asks for this conditioning (``band_gain.condition`` present)."""
    band_gain = getattr(cfg_generator, "band_gain", None)
    return band_gain is not None and band_gain.condition is not None


def label_tensors(family: int, shift: float, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One label for ``n`` rows -> ``family (n,)`` int64 and ``shift (n,)`` float32 semitones."""
    return (torch.full((n,), family, dtype=torch.int64, device=device),
            torch.full((n,), shift, dtype=torch.float32, device=device))


class Condition(nn.Module):
    """``family (B,)`` int64 labels, ``shift (B,)`` semitones -> ``(B, C)`` in the embedding's dtype;
    ``family`` None: every row unknown; ``shift`` None: no row's shift is known."""

    def __init__(self, cfg: ConditionConfig, channels: int):
        super().__init__()
        self.cfg = cfg
        self.family = nn.Embedding(len(FAMILIES) + 1, channels)
        self.shift = nn.Linear(2, channels, bias=False)
        with torch.no_grad():
            self.family.weight.zero_()
            self.shift.weight.zero_()

    def forward(self, batch: int, family: torch.Tensor | None = None, shift: torch.Tensor | None = None
                ) -> torch.Tensor:
        """-> ``(batch, C)``: the embedding of each row's label (ValueError if ``family`` is not ``(batch,)``)."""
        if family is None:
            return self.family.weight[UNKNOWN].expand(batch, -1)
        family = family.to(self.family.weight.device).long().view(-1)
        if family.numel() != batch:
            raise ValueError(f"condition: {family.numel()} family labels for a batch of {batch}")
        e = self.family(family)  # (B, C)
        if shift is not None:
            s = shift.to(e.device).float().view(-1, 1) / SHIFT_SCALE  # (B, 1)
            known = (family != UNKNOWN)[:, None]
            feats = torch.where(known, torch.cat([s, s.abs()], dim=1), 0.0)  # unknown rows read no shift, not even NaN
            e = e + self.shift(feats.to(e.dtype))
        return e
