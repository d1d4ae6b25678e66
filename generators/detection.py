"""Degradation detection: the band-gain encoder is taught to name what was done to its input.

The band gains are only as good as the encoder's guess of the round trip (a phase vocoder
lost level, a time-domain shifter or clean input did not), and the reconstruction loss
teaches that guess only through the gains it leads to. This module gives the guess its
own supervised signal: a classifier on the encoder's pooled context, trained with the
round trip each crop went through (the training data's ``family`` labels):

    context (B, C, F) -> conv 1x1 -> logits (B, L, F)   L = 1 + len(FAMILIES) classes
    labels (B,): 0 = clean input, i = FAMILIES[i - 1]   (``gan.data.loader.SHIFTER_LABELS``)
    loss = weight * cross-entropy(logits, labels), the mean over rows and frames

The model stays blind: the labels are targets during training, never inputs, so it reads
nothing a user has to know. Supervising the degradation representation of a blind
restoration network with the degradation's class is the explicit form of the
degradation-aware encoders of blind super-resolution (Wang et al. 2021, DASR, learn it by
contrast instead; Li et al. 2022, AirNet, likewise); here it is an auxiliary loss of the
generator (``Generator.auxiliary_losses``), so the trainer needs nothing else. Label 0 must
mean clean input: the data may not hide labels (``data.unknown_fraction: 0``) or remix
crops (``data.remix_fraction: 0``); the config refuses otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .condition import FAMILIES
from .layers import weight_normed

CLASSES = ("clean input",) + FAMILIES  # the classifier's outputs, in the order of the data's labels


@dataclass
class DetectionConfig:
    """``generator.band_gain.detect``: present (``{}``) = the encoder is also trained to classify its input."""
    weight: float = 1.0  # of the cross-entropy, against the reconstruction loss (mel weight 15 in cpu.yaml)

    def __post_init__(self):
        if not self.weight > 0:
            raise ValueError(f"band_gain.detect.weight: {self.weight} must be > 0")


def detecting(cfg_generator) -> bool:
    """Whether a generator config asks for this classifier (``band_gain.detect`` present)."""
    band_gain = getattr(cfg_generator, "band_gain", None)
    return band_gain is not None and band_gain.detect is not None


class Detection(nn.Module):
    """``context (B, C, F)`` -> logits ``(B, len(CLASSES), F)``; ``loss`` scores them against labels."""

    def __init__(self, cfg: DetectionConfig, channels: int):
        super().__init__()
        self.cfg = cfg
        self.head = weight_normed(nn.Conv1d(channels, len(CLASSES), kernel_size=1))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.head(context)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits (B, L, F)``, ``labels (B,)`` int64 in ``[0, L)`` -> ``weight`` x the mean cross-entropy
        (nats) over rows and frames; ValueError for a label outside the classes."""
        labels = labels.to(logits.device).long().view(-1)
        if labels.numel() != len(logits) or labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f"detect: {labels.numel()} labels in [0, {logits.shape[1]}) expected for a batch "
                             f"of {len(logits)}, got {labels.tolist()}")
        target = labels[:, None].expand(-1, logits.shape[-1])  # (B, F): one round trip per crop
        return self.cfg.weight * F.cross_entropy(logits.float(), target)

    @torch.no_grad()
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, L, F)`` logits -> ``(B, L)``: each row's class probabilities, averaged over frames."""
        return logits.float().softmax(dim=1).mean(dim=-1)
