"""Degradation detection: the band-gain encoder is taught to name what was done to its input.

The band gains are only as good as the encoder's guess of the round trip (a phase vocoder
lost level, a time-domain shifter or clean input did not), and the reconstruction loss
teaches that guess only through the gains it leads to. This module gives the guess its
own supervised signal: a classifier on the encoder's pooled context,

    context (B, C, F) -> conv 1x1 -> logits (B, L, F)   L = len(CLASSES) = 1 + len(FAMILIES)
    classes: 0 = clean input, i = FAMILIES[i - 1]       (the data's labels, ``gan.data.loader.SHIFTER_LABELS``)

trained by the cross-entropy with the round trip each crop went through
(``gan.losses.detection``, weight ``loss_weights.detect``; the G step asks the generator for
the logits with ``classify=True``). The model stays blind: the labels are targets during
training, never inputs, so it reads nothing a user has to know. Supervising the
degradation representation of a blind restoration network with the degradation's class is
the explicit form of the degradation-aware encoders of blind super-resolution (Wang et al.
2021, DASR, learn it by contrast instead). Class 0 must mean clean input: the data may not
hide labels (``data.unknown_fraction: 0``) or remix crops (``data.remix_fraction: 0``); the
config refuses otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .condition import FAMILIES
from .layers import weight_normed

CLASSES = ("clean input",) + FAMILIES  # the classifier's outputs, in the order of the data's labels
NO_CLASSIFIER = "this generator has no degradation classifier (generator.band_gain.detect)"


@dataclass
class DetectionConfig:
    """``generator.band_gain.detect``: present (``{}``) = the encoder also feeds a classifier of the round trip,
    trained with weight ``loss_weights.detect``."""


def detecting(cfg_generator) -> bool:
    """Whether a generator config asks for this classifier (``band_gain.detect`` present)."""
    band_gain = getattr(cfg_generator, "band_gain", None)
    return band_gain is not None and band_gain.detect is not None


class Detection(nn.Module):
    """``context (B, C, F)`` -> logits ``(B, len(CLASSES), F)``."""

    def __init__(self, cfg: DetectionConfig, channels: int):
        super().__init__()
        self.cfg = cfg
        self.head = weight_normed(nn.Conv1d(channels, len(CLASSES), kernel_size=1))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.head(context)

    @torch.no_grad()
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, L, F)`` logits -> ``(B, L)``: each row's class probabilities, averaged over frames."""
        return logits.float().softmax(dim=1).mean(dim=-1)
