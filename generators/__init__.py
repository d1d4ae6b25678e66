"""Generator registry: config name -> (nn.Module class, config dataclass).

Every generator maps ``(B, 1, T) -> (B, 1, T)`` for any ``T >= 1`` and is built
from its typed config section: ``build_generator(cfg)``.
"""
from __future__ import annotations

import torch.nn as nn

REGISTRY: dict[str, tuple[type[nn.Module], type]] = {}


def build_generator(cfg) -> nn.Module:
    if cfg.name not in REGISTRY:
        raise ValueError(f"generator {cfg.name!r}: unknown; known: {sorted(REGISTRY)}")
    return REGISTRY[cfg.name][0](cfg)
