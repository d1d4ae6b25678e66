"""The degradation classifier's loss (``generator.band_gain.detect``, ``generators/detection.py``).

    loss = DetectionLoss()(logits, labels, degraded)   # (B, L, F), (B,), (B, 1, T) -> scalar, nats

The cross-entropy of each frame's logits against the round trip its crop went through
(``labels``: 0 = clean input, i = ``FAMILIES[i - 1]``, as the data gives them), the mean over
rows and frames, in float32 also under bf16 autocast. Crops of digital silence (``degraded``
all zeros, ``data.silence_fraction``) show no round trip and are left out; a batch of
silence only gives 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # torch's ignore_index


class DetectionLoss(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        target = labels.to(logits.device).long().view(-1, 1).expand(-1, logits.shape[-1])  # (B, F)
        silent = degraded.flatten(1).abs().amax(dim=1) == 0  # (B,)
        target = torch.where(silent[:, None], IGNORE, target)
        per_frame = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
        return per_frame / (target != IGNORE).sum().clamp_min(1)
