"""Discriminator registry: config name -> (nn.Module class, config dataclass).

Every discriminator maps ``(B, 1, T)`` to ``list[(logits, feature_maps)]``, one
entry per sub-discriminator; ``MultiDiscriminator`` concatenates those lists.
"""
from __future__ import annotations

import torch.nn as nn

REGISTRY: dict[str, tuple[type[nn.Module], type]] = {}
