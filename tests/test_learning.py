"""The training signal works: a tiny generator learns to undo a round trip on fixed data.

A change that silently breaks learning (a loss that stops flowing, a detached output, a
wrong sign, a loader that pairs the wrong crops, an optimizer that does not step) fails
here, in CI, instead of in a user's week-long run. The distance is measured on fixed
crops of the training split: the test checks the training signal, not generalisation
(that is the evaluation matrix's job, README "What a model restores").
"""
import numpy as np
import pytest
import torch

from conftest import DEMO_AUDIO
from gan.dsp.audio import read_audio, to_mono, write_audio
from gan.data.cache import open_cache
from gan.config import config_from_dict
from gan.data.loader import CropSampler
from gan.train.trainer import Trainer

STEPS = 400
MARGIN = 0.10  # the mel distance must fall at least 10 % below the degraded input's (measured: 19 %)


def learning_dict(audio_dir, cache_dir) -> dict:
    return {
        "data": {"audio_dir": str(audio_dir), "cache_dir": str(cache_dir), "segment_length": 4096,
                 "batch_size": 4, "num_workers": 0, "val_fraction": 0.0, "val_segment_seconds": 0.5,
                 "val_examples": 0, "degrade": {"shifts": [-12, 12], "n_fft": 512, "shifters": {"torchaudio": 1.0}}},
        "generator": {"name": "dac_unet", "channels": 8, "max_channels": 32, "strides": [2, 4], "patch_size": 2,
                      "residual": True, "output_activation": "none"},
        "discriminators": [{"name": "mpd", "periods": [2, 3], "channels": [4, 8]}],
        "trainer": {"max_steps": STEPS, "pretrain_steps": STEPS, "log_every": STEPS, "val_every": STEPS,
                    "save_every": STEPS, "keep_last": 1},
        "loss_weights": {"mel": 15.0, "l1": 0.0},
        "optim": {"generator": {"name": "muon", "lr": 1e-3, "muon_lr": 1e-1, "grad_clip": 1000.0}},
    }


@pytest.fixture(scope="module")
def learning_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    for name in ["loop_amen", "guit_em9", "ambi_piano", "bass_voxy_c"]:
        x, sr = read_audio(DEMO_AUDIO / f"{name}.flac")
        write_audio(root / "audio" / f"{name}.wav", to_mono(x)[None, : 2 * sr], sr)
    return root / "audio", root / "cache"


@torch.no_grad()
def mel_distance(tr: Trainer, crops: dict) -> tuple[float, float]:
    """(enhanced, degraded) mel distance of fixed crops to their clean references."""
    g = tr.generator_for_inference().eval()
    clean, degraded = (torch.from_numpy(crops[k].copy())[:, None] for k in ("clean", "degraded"))
    return float(tr.validator.mel(g(degraded), clean)), float(tr.validator.mel(degraded, clean))


def test_generator_learns_to_undo_the_round_trip(learning_data, tmp_path):
    torch.manual_seed(0)
    cfg = config_from_dict(learning_dict(*learning_data))
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    try:
        split = open_cache(tr.cache_dir).split("train")
        crops = CropSampler(split, 16384, cfg.data.silence_db).draw(np.random.default_rng(7), 8)
        enhanced, degraded = mel_distance(tr, crops)
        assert enhanced == pytest.approx(degraded, rel=1e-6)  # residual output: an untrained model is the identity
        tr.train()
        enhanced, degraded = mel_distance(tr, crops)
    finally:
        tr.close()
    assert enhanced < (1 - MARGIN) * degraded, (enhanced, degraded)
