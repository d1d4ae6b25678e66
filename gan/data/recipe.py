"""The degradation recipe: what a clean recording becomes before the generator sees it.

Shared by preprocessing (the training cache) and evaluation (held-out recordings
degraded on the fly), so both apply the same steps: mono at 48 kHz, pieces of at most
``PIECE_SECONDS``, an optional band limit, then ``variants`` round trips by shifts drawn
per piece. Every choice is a hash of (seed, file, piece), so the recipe is deterministic
and independent of the order or the machine.
"""
from __future__ import annotations

import math

import numpy as np
import soundfile as sf

from gan.config import DegradeConfig, config_hash
from gan.dsp.audio import resample, to_mono
from gan.dsp.shifters import MODEL_RATE, choose_shifter, round_trip


PIECE_SECONDS = 30.0  # longer files are cut so a worker's memory stays bounded
MAX_PEAK = 0.99
LOWPASS_TAPS = 1023  # band-limiting FIR (Kaiser beta 12): a transition of about 0.5 kHz at 48 kHz


def num_variants(cfg: DegradeConfig) -> int:
    """Degraded versions stored per piece."""
    return cfg.variants or len(cfg.shifts)


def piece_shifts(cfg: DegradeConfig, rel: str, piece: int) -> list[int]:
    """The shift of each variant of piece ``piece`` of file ``rel``: all shifts in order, or ``variants`` distinct ones drawn."""
    if not cfg.variants:
        return list(cfg.shifts)
    rng = np.random.default_rng(int(config_hash(f"shifts|{cfg.seed}|{rel}#{piece}"), 16))
    return [int(s) for s in rng.choice(cfg.shifts, size=cfg.variants, replace=False)]


def split_of(rel: str, val_fraction: float) -> str:
    return "val" if unit_hash(rel) < val_fraction else "train"


def unit_hash(text: str) -> float:
    return int(config_hash(text), 16) / 16.0**16


def piece_bounds(frames: int, rate: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` source frames of the pieces (each <= ``PIECE_SECONDS``) a file is cut into."""
    n = max(1, math.ceil(frames / (PIECE_SECONDS * rate)))
    bounds = np.linspace(0, frames, n + 1).round().astype(int)
    return [(int(bounds[k]), int(bounds[k + 1])) for k in range(n)]


def mono_model_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """``(C, T)`` at ``rate`` Hz -> ``(T',)`` float32 mono at 48 kHz, as every piece is stored."""
    return np.asarray(resample(to_mono(np.ascontiguousarray(audio)), rate, MODEL_RATE), dtype=np.float32)


def bandlimit(clean: np.ndarray, rel: str, piece: int, seed: int) -> tuple[np.ndarray, str]:
    """``(T,)`` at 48 kHz -> (the same band-limited, what was done), chosen per piece from a hash.

    Half the pieces go through a lossy codec that soundfile writes (MP3 or Ogg Vorbis at a
    compression level in [0.3, 0.9]: cut-offs of about 8-21 kHz), half through a low-pass at
    16-20 kHz (a linear-phase Kaiser FIR, about 120 dB down from 0.5 kHz above the cut-off:
    the anti-alias filter of a lower-rate source). Both keep the alignment (tested).
    """
    import io

    u = [unit_hash(f"bandlimit|{seed}|{rel}#{piece}|{i}") for i in range(2)]
    if u[0] < 0.5:
        fmt, subtype = ("MP3", "MPEG_LAYER_III") if u[0] < 0.25 else ("OGG", "VORBIS")
        level = round(0.3 + 0.6 * u[1], 2)
        buf = io.BytesIO()
        sf.write(buf, clean, MODEL_RATE, format=fmt, subtype=subtype, compression_level=level)
        buf.seek(0)
        y = sf.read(buf, dtype="float32")[0][: len(clean)]
        return np.pad(y, (0, len(clean) - len(y))), f"{fmt.lower()} {level}"
    from scipy.signal import fftconvolve, firwin

    cutoff = int(round(16000 + 4000 * u[1], -2))  # Hz
    taps = firwin(LOWPASS_TAPS, cutoff, window=("kaiser", 12.0), fs=MODEL_RATE)  # symmetric: linear phase
    low = fftconvolve(clean, taps, mode="same")  # centred: no delay
    return np.asarray(low, dtype=np.float32), f"low-pass {cutoff} Hz"


def degrade_piece(clean: np.ndarray, rel: str, piece: int, cfg: DegradeConfig,
                  shifts: list[int]) -> tuple[dict[int, str], dict[int, np.ndarray]]:
    """Piece ``piece`` of file ``rel``, ``(T,)`` at 48 kHz -> (its shifter per shift, its round trip ``(T,)`` per shift).

    The shifter is drawn per piece and shift, keyed ``"<rel>#<piece>"``.
    """
    shifters = {s: choose_shifter(cfg, f"{rel}#{piece}", s) for s in shifts}
    return shifters, {s: round_trip(clean, s, cfg, shifters[s]) for s in shifts}
