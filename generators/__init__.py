"""Generator registry: config name -> (nn.Module class, config dataclass).

Every generator maps ``(B, 1, T) -> (B, 1, T)`` for any ``T >= 1``, reports
``num_params()`` and ``receptive_field()`` (samples), and is built from its typed
config section: ``build_generator(cfg)``.

    dac_unet   U-Net of DAC encoder / decoder blocks with skips (generators/dac_unet.py)
    wavunet    HiFi++ WaveUNet (generators/wavunet.py)
"""
from __future__ import annotations

import torch.nn as nn

from .dac_unet import DacUNet, DacUNetConfig
from .wavunet import WavUNet, WavUNetConfig

REGISTRY: dict[str, tuple[type[nn.Module], type]] = {
    "dac_unet": (DacUNet, DacUNetConfig),
    "wavunet": (WavUNet, WavUNetConfig),
}


def build_generator(cfg) -> nn.Module:
    if cfg.name not in REGISTRY:
        raise ValueError(f"generator {cfg.name!r}: unknown; set generator.name to one of {sorted(REGISTRY)}")
    return REGISTRY[cfg.name][0](cfg)


__all__ = ["REGISTRY", "build_generator", "DacUNet", "DacUNetConfig", "WavUNet", "WavUNetConfig"]
