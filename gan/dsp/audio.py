"""Audio file I/O and resampling shared by preprocessing, enhancement and evaluation.

Arrays are float32 ``(C, T)`` in [-1, 1]. Reading and writing go through
soundfile; resampling through ``torchaudio.functional.resample``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from gan.errors import UnshiftError, first_line

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".mp3", ".opus", ".w64", ".caf"}


class AudioError(UnshiftError, ValueError):
    """A file that cannot be used as audio; the message names the file."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any soundfile-readable file -> (float32 ``(C, T)``, sample rate)."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except Exception as e:  # soundfile raises several types for bad files
        msg = first_line(e)
        raise AudioError(f"{path}: cannot read audio ({msg})") from None
    return np.ascontiguousarray(data.T), int(sr)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str | None = None,
                format: str | None = None) -> None:
    """Write float ``(C, T)`` audio; the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, dtype=np.float32).T, sample_rate, subtype=subtype, format=format)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """``(C, T) -> (T,)`` by averaging channels."""
    return audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]


def resample(audio: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int):
    """Band-limited resampling along the last axis; numpy in -> numpy out."""
    if orig_sr == new_sr:
        return audio
    is_np = isinstance(audio, np.ndarray)
    if audio.shape[-1] == 0:  # torchaudio cannot reshape an empty signal
        return audio[..., :0].astype(np.float32) if is_np else audio[..., :0].float()
    x = torch.from_numpy(np.ascontiguousarray(audio)) if is_np else audio
    y = AF.resample(x.float(), orig_sr, new_sr)
    return y.numpy() if is_np else y


def find_audio_files(folder: str | Path) -> list[Path]:
    """All audio files below ``folder`` (recursive), sorted for determinism."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"audio folder {folder}: not found; point data.audio_dir at a folder of recordings")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
