"""The pitch round trip that produces the degraded half of each training pair.

    clean 48 kHz ─▶ resample to cfg.oversample_rate (96 kHz) ─▶ shift +n ─▶ shift −n
                 ─▶ low-pass at the original Nyquist and resample back to 48 kHz

Oversampling by two leaves room above the original Nyquist, so a shift up by up to an
octave keeps the whole band; the round trip then only carries the shifter's artifacts,
never a band the model would have to invent. The low-pass at the original Nyquist is the
anti-aliasing filter of the band-limited (windowed-sinc) resampler back to the original
rate (torchaudio's ``resample``, cut-off 0.99 x Nyquist).

Shifters are pluggable (``SHIFTERS``: name -> function ``(x (C, T) float32 tensor, rate,
semitones, cfg) -> (C, T)``) and come from every family users meet (``SHIFTER_INFO``
names each one's family, package and licence). All are deterministic.

- ``torchaudio`` (phase vocoder): the algorithm of ``torchaudio.functional.pitch_shift``
  (phase-vocoder time stretch, then resampling by the pitch ratio) with ``cfg.n_fft`` /
  ``cfg.hop_length``. torchaudio's own function resamples by ``int(rate / ratio) : rate``,
  whose sinc kernel needs tens of GB for non-octave shifts at 96 kHz; here that ratio is
  reduced to a fraction with denominator <= 1000 (pitch error < 0.001 cent; the numerator
  reaches about 2000 for shifts down, see ``reduced_ratio``). Its phase vocoder runs in
  double precision (no drift on long files; ``gan.dsp.stream`` streams the same): for
  octave shifts the result equals ``torchaudio.functional.pitch_shift`` run in double.
- ``librosa`` (phase vocoder, a second implementation): ``librosa.effects.time_stretch``
  (n_fft 2048, hop 512) then the same resampling by the pitch ratio (librosa's own
  ``pitch_shift`` resamples with soxr, ten times slower here at 96 kHz).
- ``signalsmith`` (multi-resolution spectral): Signalsmith Stretch (python-stretch, MIT).
- ``rubberband`` (phase-locked vocoder with transient handling): Rubber Band through
  Spotify's ``pedalboard.PitchShift``. GPL-3.0, so an optional extra
  (``pip install -e '.[gpl]'``); without it the shifter is a one-line error.
- ``wsola`` (time domain): WSOLA time stretch (audiotsm, MIT; Verhelst & Roelands 1993)
  then the resampling by the pitch ratio.

``cfg.shifters`` weights several shifters; ``choose_shifter`` picks one per
(file, shift) deterministically so the cache is reproducible.
"""
from __future__ import annotations

import functools
import hashlib
import math
from fractions import Fraction
from typing import Callable

import numpy as np
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from gan.config import ConfigError, DegradeConfig

MODEL_RATE = 48000
MAX_RATIO_DENOMINATOR = 1000  # a shift's rate ratio with a longer term is approximated with denominator <= this
MAX_KERNEL_SIZE = 1 << 22  # elements of a sinc resampling kernel (16 MiB in float32) we accept to build


def sinc_kernel_size(orig: int, new: int) -> int:
    """Elements of torchaudio's default sinc kernel for ``orig -> new`` (the rates reduced by their gcd)."""
    g = math.gcd(int(orig), int(new))
    orig, new = int(orig) // g, int(new) // g
    width = math.ceil(6 * orig / (0.99 * min(orig, new)))  # lowpass_filter_width 6, rolloff 0.99
    return new * (orig + 2 * width)


def reduced_ratio(orig: int, new: int) -> Fraction:
    """``new / orig``; with a term > ``MAX_RATIO_DENOMINATOR``, the nearest fraction with a denominator that short.

    The numerator of the result may exceed the limit (up to twice it for a shift down by an
    octave); its kernel stays below ``MAX_KERNEL_SIZE``.
    """
    ratio = Fraction(int(new), int(orig))
    if max(ratio.numerator, ratio.denominator) > MAX_RATIO_DENOMINATOR:
        ratio = ratio.limit_denominator(MAX_RATIO_DENOMINATOR)
    return ratio


def pitch_resample_rates(sample_rate: int, semitones: float) -> tuple[int, int]:
    """(orig, new) of the resampling by the pitch ratio that follows the time stretch of a shift."""
    ratio = reduced_ratio(int(sample_rate / 2.0 ** (-float(semitones) / 12)), sample_rate)
    return ratio.denominator, ratio.numerator


@functools.lru_cache(maxsize=64)
def _resampler(orig: int, new: int) -> T.Resample:
    return T.Resample(orig, new)  # holds its sinc kernel, which is costly to build


def _resample(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Resample ``(..., T)`` by ``new / orig``, reduced to a fraction the sinc kernel can hold."""
    ratio = reduced_ratio(orig, new)
    if ratio == 1:
        return x
    return _resampler(ratio.denominator, ratio.numerator).to(x.device)(x)


def _fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``length``."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def _pitch_by_stretch(stretch: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor,
                      sample_rate: int, semitones: float) -> torch.Tensor:
    """Pitch shift as a time stretch by ``2**(n/12)`` then resampling by the pitch ratio: ``(C, T) -> (C, T)``.

    ``stretch(x, speed)`` returns ``x`` played ``speed`` times as fast (about ``T / speed`` samples).
    """
    length = x.shape[-1]
    speed = 2.0 ** (-float(semitones) / 12)  # < 1 lengthens
    stretched = stretch(x, speed)
    return _fit_length(_resample(stretched, *pitch_resample_rates(sample_rate, semitones)), length)


def shift_torchaudio(x: torch.Tensor, sample_rate: int, semitones: float, cfg: DegradeConfig) -> torch.Tensor:
    """torchaudio's phase-vocoder pitch shift: ``(C, T) -> (C, T)``."""
    n_fft = cfg.n_fft
    hop = cfg.hop_length or n_fft // 4
    window = torch.hann_window(n_fft, device=x.device)

    def stretch(x: torch.Tensor, speed: float) -> torch.Tensor:
        spec = torch.stft(x, n_fft, hop, n_fft, window, center=True, pad_mode="reflect", return_complex=True)
        # (C, T) -> (C, n_fft // 2 + 1, frames); the vocoder runs in double precision: its accumulated
        # phase grows with the length, and a float32 sum drifts (-54 dB after 60 s) from the streamed
        # shifter's float64 one (gan.dsp.stream)
        advance = torch.linspace(0, math.pi * hop, spec.shape[-2], device=x.device, dtype=torch.float64)[..., None]
        stretched = AF.phase_vocoder(spec.to(torch.complex128), speed, advance).to(spec.dtype)
        return torch.istft(stretched, n_fft, hop, n_fft, window, length=int(round(x.shape[-1] / speed)))

    return _pitch_by_stretch(stretch, x, sample_rate, semitones)


def _numpy_stretch(fn: Callable[[np.ndarray, float], np.ndarray]) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """A numpy ``(C, T) -> (C, T')`` stretch as a tensor one."""
    def stretch(x: torch.Tensor, speed: float) -> torch.Tensor:
        y = fn(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), speed)
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    return stretch


def shift_librosa(x: torch.Tensor, sample_rate: int, semitones: float, cfg: DegradeConfig) -> torch.Tensor:
    """librosa's phase-vocoder time stretch, then resampling: ``(C, T) -> (C, T)``."""
    import librosa

    return _pitch_by_stretch(_numpy_stretch(lambda a, speed: librosa.effects.time_stretch(a, rate=speed)),
                             x, sample_rate, semitones)


def shift_wsola(x: torch.Tensor, sample_rate: int, semitones: float, cfg: DegradeConfig) -> torch.Tensor:
    """WSOLA time stretch (audiotsm, time domain), then resampling: ``(C, T) -> (C, T)``."""
    from audiotsm import wsola
    from audiotsm.io.array import ArrayReader, ArrayWriter

    def stretch(a: np.ndarray, speed: float) -> np.ndarray:
        writer = ArrayWriter(a.shape[0])
        wsola(a.shape[0], speed=speed).run(ArrayReader(a), writer)
        return writer.data

    return _pitch_by_stretch(_numpy_stretch(stretch), x, sample_rate, semitones)


def shift_signalsmith(x: torch.Tensor, sample_rate: int, semitones: float, cfg: DegradeConfig) -> torch.Tensor:
    """Signalsmith Stretch (python-stretch) pitch shift: ``(C, T) -> (C, T)``."""
    from python_stretch.Signalsmith import Stretch

    stretch = Stretch(cfg.seed)
    stretch.preset(x.shape[0], float(sample_rate))
    stretch.setTransposeSemitones(float(semitones))
    y = stretch.process(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))
    return _fit_length(torch.from_numpy(np.asarray(y, dtype=np.float32)), x.shape[-1])


def shift_rubberband(x: torch.Tensor, sample_rate: int, semitones: float, cfg: DegradeConfig) -> torch.Tensor:
    """Rubber Band (through pedalboard, GPL-3.0, optional) pitch shift: ``(C, T) -> (C, T)``."""
    try:
        from pedalboard import PitchShift
    except ImportError:
        raise ConfigError("shifter 'rubberband' needs the optional GPL extra: pip install -e '.[gpl]' "
                          "(pedalboard)") from None
    y = PitchShift(semitones=float(semitones))(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
                                              float(sample_rate))
    return _fit_length(torch.from_numpy(np.asarray(y, dtype=np.float32)), x.shape[-1])


SHIFTERS: dict[str, Callable[[torch.Tensor, int, float, DegradeConfig], torch.Tensor]] = {
    "torchaudio": shift_torchaudio,
    "librosa": shift_librosa,
    "signalsmith": shift_signalsmith,
    "rubberband": shift_rubberband,
    "wsola": shift_wsola,
}

# name -> (family, package, licence)
SHIFTER_INFO: dict[str, tuple[str, str, str]] = {
    "torchaudio": ("phase vocoder", "torchaudio", "BSD-2-Clause"),
    "librosa": ("phase vocoder", "librosa", "ISC"),
    "signalsmith": ("multi-resolution spectral", "python-stretch (Signalsmith Stretch)", "MIT"),
    "rubberband": ("phase-locked vocoder", "pedalboard (Rubber Band)", "GPL-3.0, optional extra 'gpl'"),
    "wsola": ("time domain (WSOLA)", "audiotsm", "MIT"),
}


def check_shifters(cfg: DegradeConfig) -> None:
    """Raise a one-line ``ConfigError`` for a shifter name that is not registered."""
    for name in cfg.shifters:
        if name not in SHIFTERS:
            raise ConfigError(f"data.degrade.shifters: unknown shifter {name!r}; known: {sorted(SHIFTERS)}")


def trained_shifters(cfg: DegradeConfig) -> list[str]:
    """The shifters a recipe draws round trips from (positive weight), sorted by name."""
    return sorted(n for n, w in cfg.shifters.items() if w > 0)


def choose_shifter(cfg: DegradeConfig, file_key: str, shift: int) -> str:
    """Deterministic weighted choice of a shifter for one (file, shift) pair."""
    names = trained_shifters(cfg)
    if len(names) == 1:
        return names[0]
    digest = hashlib.sha256(f"{cfg.seed}|{file_key}|{shift}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2.0**64  # uniform in [0, 1)
    total = sum(cfg.shifters[n] for n in names)
    acc = 0.0
    for name in names:
        acc += cfg.shifters[name] / total
        if u < acc:
            return name
    return names[-1]


def _as_tensor(x) -> tuple[torch.Tensor, bool, bool]:
    """Any (T,) or (C, T) array -> ((C, T) float32 CPU tensor, was_numpy, was_1d)."""
    is_np = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(np.asarray(x, dtype=np.float32)) if is_np else x.detach().float().cpu()
    if t.dim() not in (1, 2):
        raise ValueError(f"audio: expected shape (T,) or (C, T), got {tuple(t.shape)}")
    return (t[None] if t.dim() == 1 else t), is_np, t.dim() == 1


def _back(y: torch.Tensor, like, is_np: bool, was_1d: bool):
    y = y[0] if was_1d else y
    if is_np:
        return np.ascontiguousarray(y.numpy(), dtype=np.float32)
    return y.to(device=like.device, dtype=like.dtype)


def work_rate(sample_rate: int, cfg: DegradeConfig) -> int:
    """The oversampled rate for audio at ``sample_rate`` (96 kHz for 48 kHz by default)."""
    return int(round(sample_rate * cfg.oversample_rate / MODEL_RATE))


def _get(shifter: str) -> Callable:
    if shifter not in SHIFTERS:
        raise ConfigError(f"shifter {shifter!r}: unknown; known: {sorted(SHIFTERS)}")
    return SHIFTERS[shifter]


def _shift(fn: Callable, x: torch.Tensor, rate: int, semitones: float, cfg: DegradeConfig) -> torch.Tensor:
    """``fn`` on ``(C, T)``; a signal shorter than four FFT frames is zero-padded for it and cropped back
    (an STFT cannot reflect-pad a signal shorter than half its window), so every length works."""
    length = x.shape[-1]
    short = 4 * cfg.n_fft - length
    if short > 0:
        return fn(torch.nn.functional.pad(x, (0, short)), rate, semitones, cfg)[..., :length]
    return fn(x, rate, semitones, cfg)


def apply_shift(x, sample_rate: int, shift: float, cfg: DegradeConfig, shifter: str = "torchaudio"):
    """Pitch-shift once by ``shift`` semitones at any rate; same shape, length, type and rate.

    ``(T,)`` or ``(C, T)`` -> the same. Oversampled by ``cfg.oversample_rate / 48000`` and
    low-passed at the input's Nyquist on the way back.
    """
    fn = _get(shifter)
    t, is_np, was_1d = _as_tensor(x)
    length = t.shape[-1]
    if shift == 0 or length == 0:
        return _back(t.clone(), x, is_np, was_1d)
    work = work_rate(sample_rate, cfg)
    with torch.no_grad():
        y = _shift(fn, _resample(t, sample_rate, work), work, shift, cfg)
        y = _fit_length(_resample(y, work, sample_rate), length)
    return _back(y, x, is_np, was_1d)


def round_trip(x, shift: int, cfg: DegradeConfig, shifter: str = "torchaudio"):
    """The degradation: 48 kHz audio shifted by ``+shift`` then ``-shift`` semitones.

    ``(T,)`` or ``(C, T)`` at 48 kHz -> the same shape, length and type. Deterministic.
    """
    fn = _get(shifter)
    t, is_np, was_1d = _as_tensor(x)
    length = t.shape[-1]
    if length == 0:
        return _back(t.clone(), x, is_np, was_1d)
    work = work_rate(MODEL_RATE, cfg)
    with torch.no_grad():
        up = _resample(t, MODEL_RATE, work)  # (C, T) -> (C, T * work / 48000)
        y = _shift(fn, _shift(fn, up, work, shift, cfg), work, -shift, cfg)
        y = _fit_length(_resample(y, work, MODEL_RATE), length)
    return _back(y, x, is_np, was_1d)
