"""Validation during training: fixed crops of the cache's validation split, scored and listened to.

On the main process only: the generator used for inference (the EMA when on) enhances the
``data.val_examples`` fixed validation crops; the validator logs

    val/mel_distance, val/mel_distance_degraded, val/mel_improvement   multi-scale mel L1 (lower is better)
    val/si_sdr, val/si_sdr_improvement                                 dB (higher is better)

and, for the first four crops, the enhanced audio and a degraded | enhanced | clean mel image
(the degraded and clean audio once per run: ``references_logged`` is saved with the checkpoint).
It says what the splits hold when it is built (and when the validation split is empty, that
nothing will be validated), and each validation's result in one line (``val_line``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from gan.config import Config
from gan.data.cache import open_cache, split_sizes
from gan.data.loader import load_val_set
from gan.eval.metrics import relative_change
from gan.log import get_logger
from gan.losses.reconstruction import MultiScaleMelLoss, si_sdr
from gan.train.runlog import RunLogger

log = get_logger(__name__)

AUDIO_EXAMPLES = 4


class Validator:
    def __init__(self, cfg: Config, cache_dir: Path, device: torch.device, runlog: RunLogger, enabled: bool):
        self.cfg, self.cache_dir, self.device, self.runlog, self.enabled = cfg, cache_dir, device, runlog, enabled
        self.mel = MultiScaleMelLoss(cfg.loss.mel, cfg.data.sample_rate).to(device)
        self.val_set: dict[str, torch.Tensor] | None = None  # loaded on first use
        self.references_logged = False
        self.last_line: str | None = None  # the latest validation's ``val_line``
        if enabled:
            manifest = open_cache(cache_dir).manifest
            log.info("data: cache %s: %s", cache_dir, split_sizes(manifest))
            if not manifest["splits"]["val"]["items"]:
                log.warning("note: the validation split is empty (data.val_fraction %g; a file goes wholly to one "
                            "split): no val/ scalars, audio or validation lines in this run; add recordings to "
                            "data.audio_dir", cfg.data.val_fraction)

    @torch.no_grad()
    def __call__(self, generator: torch.nn.Module, step: int) -> dict[str, float]:
        """Score ``generator`` at ``step`` and log it; ``{}`` on other processes or without validation data."""
        if not self.enabled:
            return {}
        if self.val_set is None:
            self.val_set = load_val_set(self.cache_dir, self.cfg.data)
        val = self.val_set
        if len(val["degraded"]) == 0:
            return {}
        was_training = generator.training
        generator.eval()
        enhanced = torch.cat([generator(x[None].to(self.device)) for x in val["degraded"]]).float()  # (N, 1, T)
        generator.train(was_training)
        clean, degraded = val["clean"].to(self.device), val["degraded"].to(self.device)
        mel_enh, mel_deg = float(self.mel(enhanced, clean)), float(self.mel(degraded, clean))
        sdr_enh, sdr_deg = si_sdr(enhanced, clean), si_sdr(degraded, clean)
        out = {
            "val/mel_distance": mel_enh,
            "val/mel_distance_degraded": mel_deg,
            "val/mel_improvement": mel_deg - mel_enh,
            "val/si_sdr": float(sdr_enh.mean()),
            "val/si_sdr_improvement": float((sdr_enh - sdr_deg).mean()),
        }
        self.runlog.scalars(out, step)
        self.last_line = val_line(step, out)
        log.info(self.last_line)
        for i in range(min(AUDIO_EXAMPLES, len(enhanced))):
            if not self.references_logged:
                self.runlog.audio(f"audio/{i}/degraded", val["degraded"][i], 0)
                self.runlog.audio(f"audio/{i}/clean", val["clean"][i], 0)
            self.runlog.audio(f"audio/{i}/enhanced", enhanced[i].cpu(), step)
            self.runlog.spectrograms(f"spec/{i}", {"degraded": val["degraded"][i], "enhanced": enhanced[i].cpu(),
                                                "clean": val["clean"][i]}, step)
        self.references_logged = True
        self.runlog.flush()
        return out


def val_line(step: int, scores: dict[str, float]) -> str:
    """``val step 250: mel 1.123 (input 1.161, +3.3 % closer)``: the model's mel distance to the clean crops
    against the degraded input's (lower is better), and how much closer to clean the model is than the
    input, relative to the input's distance (+ = better, as in every evaluation report)."""
    enhanced, degraded = scores["val/mel_distance"], scores["val/mel_distance_degraded"]
    closer = 100 * relative_change("mel", degraded, enhanced) if degraded else 0.0
    return f"val step {step}: mel {enhanced:.3f} (input {degraded:.3f}, {closer:+.1f} % closer)"
