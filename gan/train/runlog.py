"""TensorBoard logging for the main process: scalars, audio and mel-spectrogram images.

Tags are hierarchical and stable (``train/g/mel``, ``train/d/mpd_2``,
``val/si_sdr_improvement``, ``audio/0/enhanced``, ``spec/0``). A logger built
with ``enabled=False`` (every non-main process) does nothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class RunLogger:
    def __init__(self, log_dir: str | Path, enabled: bool = True, sample_rate: int = 48000,
                 purge_step: int | None = None):
        self.enabled = enabled
        self.sample_rate = sample_rate
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
            self._mel = None

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            v = float(v.detach()) if torch.is_tensor(v) else float(v)
            self.writer.add_scalar(f"{prefix}{k}", v, step)

    def audio(self, tag: str, wav: torch.Tensor | np.ndarray, step: int) -> None:
        """``wav``: ``(T,)`` or ``(1, T)`` float in [-1, 1]."""
        if not self.enabled:
            return
        wav = torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1).clamp(-1, 1)
        self.writer.add_audio(tag, wav, step, sample_rate=self.sample_rate)

    def spectrograms(self, tag: str, wavs: dict[str, torch.Tensor], step: int) -> None:
        """Log-mel spectrograms of several signals side by side as one image."""
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mels = {name: self._log_mel(w) for name, w in wavs.items()}
        vmax = max(m.max() for m in mels.values())
        fig, axes = plt.subplots(1, len(mels), figsize=(4 * len(mels), 3), squeeze=False)
        for ax, (name, m) in zip(axes[0], mels.items()):
            ax.imshow(m, origin="lower", aspect="auto", vmin=vmax - 80, vmax=vmax, cmap="magma")
            ax.set_title(name)
            ax.set_xlabel("frame")
        axes[0][0].set_ylabel("mel bin")
        fig.tight_layout()
        self.writer.add_figure(tag, fig, step)
        plt.close(fig)

    def _log_mel(self, wav: torch.Tensor) -> np.ndarray:
        import torchaudio

        if self._mel is None:
            self._mel = torchaudio.transforms.MelSpectrogram(
                self.sample_rate, n_fft=2048, hop_length=512, n_mels=128, power=2.0
            )
        spec = self._mel(torch.as_tensor(wav, dtype=torch.float32).reshape(-1).cpu())  # (128, frames)
        return (10 * torch.log10(spec.clamp_min(1e-10))).numpy()

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
