"""Run logging through Accelerate's trackers: scalars, audio and mel-spectrogram images.

``trainer.log_with`` names the trackers (TensorBoard by default, under ``<run_dir>/tb``).
Scalars go to every tracker (``Accelerator.log``); images to every tracker that takes
images; audio to TensorBoard and Weights & Biases, the trackers with an audio type. Only
the main process writes (Accelerate's trackers do nothing elsewhere).

Tags are hierarchical and stable (``train/g/mel``, ``train/d/mpd_2``,
``val/si_sdr_improvement``, ``audio/0/enhanced``, ``spec/0``).

    log = RunLogger(accelerator, "tb", sample_rate=48000, purge_step=None)
    log.scalars({"train/g/mel": 1.2}, step=10)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class RunLogger:
    """Starts the accelerator's trackers (``init_trackers``) and writes to them.

    ``purge_step``: a resumed TensorBoard run drops events at and after this step that the
    interrupted run wrote (``SummaryWriter(purge_step=...)``).
    """

    def __init__(self, accelerator, run_name: str = "tb", sample_rate: int = 48000, purge_step: int | None = None):
        self.accelerator = accelerator
        self.sample_rate = sample_rate
        self._mel = None
        init = {"tensorboard": {"purge_step": purge_step}} if purge_step is not None else {}
        if accelerator.log_with:
            accelerator.init_trackers(run_name, init_kwargs=init)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """``{tag: number}`` at ``step`` to every tracker."""
        values = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in values.items()}
        self.accelerator.log(values, step=step)

    def audio(self, tag: str, wav: torch.Tensor | np.ndarray, step: int) -> None:
        """``wav``: ``(T,)`` or ``(1, T)`` float in [-1, 1] at ``sample_rate``."""
        wav = torch.as_tensor(wav, dtype=torch.float32).reshape(-1).clamp(-1, 1).cpu()
        for tracker in self._trackers():
            if tracker.name == "tensorboard":
                tracker.tracker.add_audio(tag, wav[None], step, sample_rate=self.sample_rate)
            elif tracker.name == "wandb":
                import wandb

                tracker.log({tag: wandb.Audio(wav.numpy(), sample_rate=self.sample_rate)}, step=step)

    def spectrograms(self, tag: str, wavs: dict[str, torch.Tensor], step: int) -> None:
        """Log-mel spectrograms of several signals side by side, as one image."""
        trackers = [t for t in self._trackers() if hasattr(t, "log_images")]
        if not trackers:
            return
        image = self._render(wavs)  # (H, W, 3) uint8
        for tracker in trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: image[None]}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({tag: [image]}, step=step)

    def flush(self) -> None:
        for tracker in self._trackers():
            if tracker.name == "tensorboard":
                tracker.tracker.flush()

    def _trackers(self) -> list:
        return self.accelerator.trackers if self.accelerator.is_main_process else []

    def _render(self, wavs: dict[str, torch.Tensor]) -> np.ndarray:
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
        fig.canvas.draw()
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
        return image

    def _log_mel(self, wav: torch.Tensor) -> np.ndarray:
        """``(T,)`` -> ``(128, frames)`` power mel spectrogram in dB (n_fft 2048, hop 512)."""
        import torchaudio

        if self._mel is None:
            self._mel = torchaudio.transforms.MelSpectrogram(self.sample_rate, n_fft=2048, hop_length=512,
                                                             n_mels=128, power=2.0)
        spec = self._mel(torch.as_tensor(wav, dtype=torch.float32).reshape(-1).cpu())
        return (10 * torch.log10(spec.clamp_min(1e-10))).numpy()


def closing_line(first_step: int, step: int, max_steps: int, seconds: float, last_val: str | None,
                 checkpoint: Path | None, tb_dir: Path | None) -> str:
    """The line a run ends with: how far it got, its last validation (``Validator.last_line``), its newest
    checkpoint and, with TensorBoard among the trackers, the command that shows its curves."""
    end = "done" if step >= max_steps else f"stopped at step {step} of {max_steps}"
    parts = [f"{end}: steps {first_step} -> {step} in {seconds / 60:.1f} min",
             f"last {last_val}" if last_val else "no validation in this run",
             f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"]
    if tb_dir is not None:
        parts.append(f"curves: tensorboard --logdir {tb_dir}")
    return "; ".join(parts)
