"""Tiny model configs for CPU tests: forward + backward on 4 x 16384 well under a second.

    from tiny_configs import tiny_dac_unet, tiny_discriminators, tiny_model_sections
    g = build_generator(tiny_dac_unet())
    d = build_discriminator(tiny_discriminators())
    cfg = config_from_dict({**tiny_model_sections(), "data": ..., "trainer": ...})

Keyword arguments override fields, e.g. ``tiny_dac_unet(patch_size=2)``.
"""
from __future__ import annotations

import contextlib

import torch

from discriminators import MPDConfig, MRDConfig, MSDConfig
from gan.config import to_dict
from generators import DacUNetConfig, WavUNetConfig
from generators.band_gain import BandGainConfig


def tiny_dac_unet(**kw) -> DacUNetConfig:
    """2x patching, widths 4-8-16, strides 2, 4 (total stride 16)."""
    return DacUNetConfig(**{"channels": 4, "strides": [2, 4], "patch_size": 2, **kw})


def tiny_band_gain(**kw) -> BandGainConfig:
    """A 64-point STFT (hop 16), 6 bands, 4 channels, +-6 frames of context."""
    return BandGainConfig(**{"n_fft": 64, "hop": 16, "n_bands": 6, "channels": 4,
                             "context_seconds": 6 * 16 / 48000, **kw})


def tiny_wavunet(**kw) -> WavUNetConfig:
    """Widths 4-8-16, depth 2, scale 4 (total stride 16)."""
    return WavUNetConfig(**{"widths": [4, 8, 16], "depth": 2, **kw})


def tiny_generators() -> dict[str, object]:
    """Variants covering every generator option, by test id."""
    return {
        "dac_unet": tiny_dac_unet(),
        "dac_unet_concat_odd": tiny_dac_unet(strides=[2, 3], skip="concat", depth=2),
        "dac_unet_nopatch_noskip_linear": tiny_dac_unet(patch_size=1, channels=2, strides=[4], skip="none",
                                                        bottleneck_depth=0, output_activation="none"),
        "wavunet": tiny_wavunet(),
        "wavunet_plain_tanh": tiny_wavunet(norm="none", scale=3, kernel_size=3, output_activation="tanh"),
    }


def tiny_mpd(**kw) -> MPDConfig:
    return MPDConfig(**{"periods": [2, 3], "channels": [4, 8, 16], **kw})


def tiny_mrd(**kw) -> MRDConfig:
    return MRDConfig(**{"window_lengths": [256, 128], "channels": 4, **kw})


def tiny_msd(**kw) -> MSDConfig:
    return MSDConfig(**{"rates": [1, 2], "channels": [4, 8, 16, 16], "groups": [2, 4], **kw})


def tiny_discriminators() -> list:
    """MPD + MR-STFT, the production pair, tiny."""
    return [tiny_mpd(), tiny_mrd()]


def tiny_model_sections(generator: str = "dac_unet") -> dict:
    """``generator`` and ``discriminators`` sections as plain dicts for ``config_from_dict``."""
    gen = {"dac_unet": tiny_dac_unet, "wavunet": tiny_wavunet}[generator]()
    return {"generator": to_dict(gen), "discriminators": to_dict(tiny_discriminators())}


@contextlib.contextmanager
def single_thread():
    """Tiny convs run fastest on one thread, above all on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
