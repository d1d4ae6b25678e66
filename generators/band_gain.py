"""Band gains from a degradation encoder: the STFT-domain front of a generator.

A phase-vocoder round trip loses energy by cancellation between frames whose phases no
longer agree, and how much it loses depends on frequency and time (torchaudio's and
librosa's keep 20-35 % of it, Rubber Band 30-60 %); a time-domain (WSOLA) or Signalsmith
round trip keeps its level. One broadband gain cannot tell them apart or follow the
frequency dependence. This module looks at the STFT of its input with enough spectral
resolution and context to see which kind of round trip it has (the degradation encoder)
and predicts one log-gain per band and frame, applied to the STFT and resynthesised:

    x (B, 1, T) -> STFT X (B, K, F)  [K = n_fft / 2 + 1 bins, F = T // hop + 1 frames, Hann, centred]
      features (B, 5, K, F): log|X| / 4 (left out with ``magnitude: false``: (B, 4, K, F)),
        cos / sin of the phase step between adjacent bins
        (vertical coherence, the cue of phasiness: Laroche & Dolson 1999), cos / sin of the
        phase advance between frames minus the bin's own (instantaneous frequency deviation),
        the four phase features weighted by a soft presence |X| / (|X| + mean over bins)
      -> conv2d stack, frequency strided by 16        -> (B, C, ~K / 16, F)
      -> flatten, conv 1x1                            -> (B, C, F)       the local embedding
      -> mean over +-context frames (``context_seconds``)  -> (B, C, F)  what the round trip was
         (+ the embedding of the known family and shift, ``condition``: condition.py)
         (-> a classifier of the round trip, trained on the data's labels, ``detect``: detection.py)
      -> conv1d on [local, context] -> g (B, N, F)  one log-gain per band (N mel bands), zero at start
      -> bin gains exp(W g) (B, K, F), W (K, N) triangular band weights that sum to 1 per bin
      -> y = x + ISTFT(X (exp(W g) - 1))                                     (B, 1, T)

Every conv is weight-normalised as in the rest of the generator (Muon turns the directions, AdamW
the magnitudes, so no weight grows by Muon's fixed-size steps). The last conv starts at zero (its
magnitude and bias), so an untrained module returns exactly its input (the
correction term is the ISTFT of zeros). Gains are bounded to +-``max_gain_db`` by a tanh.
Per-band gains restore band energies explicitly, as DeepFilterNet's ERB gains (Schröter et
al. 2022) and Apollo's gain-shape band split (Li & Luo 2024) do; the encoder's context is
the degradation-aware conditioning of blind super-resolution (Wang et al. 2021, DASR).
Every output sample depends on a finite stretch of input (``input_span``), so chunked
inference with that much context equals whole-file inference when chunks start on
multiples of ``hop``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from .condition import Condition, ConditionConfig
from .detection import NO_CLASSIFIER, Detection, DetectionConfig
from .layers import weight_normed
from .receptive import Span

SAMPLE_RATE = 48000


@dataclass
class BandGainConfig:
    n_fft: int = 1024  # STFT size (samples at 48 kHz): 21 ms, 47 Hz bins
    hop: int = 256  # frame hop (samples); chunk starts and the generator's total stride are multiples of it
    n_bands: int = 32  # mel-spaced bands with one gain each
    channels: int = 32  # width of the encoder
    context_seconds: float = 1.0  # the encoder's pooled context, each side (seconds)
    max_gain_db: float = 24.0  # gains are bounded to +- this (dB)
    magnitude: bool = True  # the encoder sees log|X|; false: only the presence-weighted phase steps
    condition: Optional[ConditionConfig] = None  # {}: told the shifter family and shift when known (condition.py)
    detect: Optional[DetectionConfig] = None  # {}: the context also trained to classify the round trip (detection.py)

    def __post_init__(self):
        if self.n_fft < 64 or self.n_fft & (self.n_fft - 1):
            raise ValueError(f"band_gain.n_fft: {self.n_fft} must be a power of two >= 64")
        if self.hop < 1 or self.n_fft % self.hop:
            raise ValueError(f"band_gain.hop: {self.hop} must divide n_fft ({self.n_fft})")
        if not 2 <= self.n_bands <= self.n_fft // 2:
            raise ValueError(f"band_gain.n_bands: {self.n_bands} must be in [2, n_fft / 2]")
        if self.channels < 1 or self.context_seconds < 0 or self.max_gain_db <= 0:
            raise ValueError("band_gain: channels >= 1, context_seconds >= 0 and max_gain_db > 0")
        if self.condition is not None and self.detect is not None:
            raise ValueError("condition and detect both read the data's family labels (as input, as target); "
                             "use one")

    @property
    def context_frames(self) -> int:
        return round(self.context_seconds * SAMPLE_RATE / self.hop)


def aligned_stride(stride: int, cfg: "BandGainConfig | None") -> int:
    """A generator's total stride with band gains: a multiple of both its own stride and the hop."""
    return math.lcm(stride, cfg.hop) if cfg is not None else stride


def band_weights(n_fft: int, n_bands: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``(K, N)`` triangular mel bands over 0 .. sample_rate / 2 (torchaudio's ``melscale_fbanks``),
    normalised so every bin's weights sum to exactly 1: a band gain of g everywhere is a gain of g."""
    w = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_bands + 2, sample_rate)
    # n_bands + 2 triangles, the outermost folded into their neighbours so the edges are covered
    w = torch.cat([w[:, :2].sum(1, keepdim=True), w[:, 2:-2], w[:, -2:].sum(1, keepdim=True)], dim=1)
    w[0, 0] += w[0].sum() == 0  # 0 Hz and the Nyquist bin lie on the outer triangles' zero ends
    w[-1, -1] += w[-1].sum() == 0
    return w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _wrap(phase: torch.Tensor) -> torch.Tensor:
    """Principal value in (-pi, pi]."""
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


class BandGain(nn.Module):
    """``(B, 1, T) -> (B, 1, T)``: the input with a gain per band and frame from the degradation encoder."""

    # frequency strides of the conv2d stack: 513 bins -> 33 rows for n_fft 1024
    FREQ_STRIDES = (2, 2, 2, 2)

    def __init__(self, cfg: BandGainConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        layers, c_in = [], 5 if cfg.magnitude else 4
        for s in self.FREQ_STRIDES:
            layers += [weight_normed(nn.Conv2d(c_in, c, kernel_size=(2 * s + 1, 3), stride=(s, 1), padding=(s, 1))),
                       nn.GELU()]
            c_in = c
        self.encoder = nn.Sequential(*layers)
        rows = cfg.n_fft // 2 + 1
        for s in self.FREQ_STRIDES:
            rows = (rows - 1) // s + 1
        self.to_frames = weight_normed(nn.Conv1d(c * rows, c, kernel_size=1))  # (B, C * rows, F) -> (B, C, F)
        self.to_gain = nn.Sequential(
            weight_normed(nn.Conv1d(2 * c, c, kernel_size=3, padding=1)), nn.GELU(),
            weight_normed(nn.Conv1d(c, cfg.n_bands, kernel_size=3, padding=1)))
        with torch.no_grad():  # the last conv starts at zero: magnitude and bias (its direction stays random)
            self.to_gain[-1].parametrizations.weight.original0.zero_()
            self.to_gain[-1].bias.zero_()
        self.condition = Condition(cfg.condition, c) if cfg.condition is not None else None
        self.detection = Detection(cfg.detect, c) if cfg.detect is not None else None
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        with torch.device("cpu"):  # computed with checks on its values, also when the model is built on "meta"
            weights = band_weights(cfg.n_fft, cfg.n_bands)
        self.register_buffer("weights", weights, persistent=False)  # (K, N)
        k = torch.arange(cfg.n_fft // 2 + 1, dtype=torch.float32)
        self.register_buffer("bin_advance", 2 * math.pi * k * cfg.hop / cfg.n_fft, persistent=False)  # (K,)

    def stft(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, T) -> (B, K, F) complex
        return torch.stft(x[:, 0].float(), self.cfg.n_fft, self.cfg.hop, window=self.window,
                          center=True, return_complex=True)

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """``(B, K, F)`` complex -> ``(B, 5, K, F)``: log magnitude, vertical and horizontal phase steps;
        ``(B, 4, K, F)`` without the log magnitude (``magnitude: false``): the phase planes alone, which
        see the magnitude spectrum only through the presence weight ``|X| / (|X| + mean over bins)``,
        so a broadband gain leaves them unchanged; an equaliser changes them through that weight and
        its phase response."""
        mag = spec.abs()
        phase = spec.angle()
        d_bin = F.pad(phase[:, 1:] - phase[:, :-1], (0, 0, 0, 1))  # (B, K, F): bin k+1 - bin k
        d_frame = F.pad(phase[..., 1:] - phase[..., :-1], (1, 0))  # (B, K, F): frame f - frame f-1
        d_frame = _wrap(d_frame - self.bin_advance[:, None])  # deviation from the bin's own frequency
        # phase steps mean nothing where there is no energy: weight them by a soft presence (per frame)
        present = mag / (mag + mag.mean(dim=1, keepdim=True) + 1e-8)
        phase_steps = [present * torch.cos(d_bin), present * torch.sin(d_bin),
                       present * torch.cos(d_frame), present * torch.sin(d_frame)]
        log_mag = [torch.log(mag + 1e-5) / 4] if self.cfg.magnitude else []
        return torch.stack(log_mag + phase_steps, dim=1)

    def encode(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K, F)`` complex -> the local embedding and its pooled context, both ``(B, C, F)``."""
        h = self.encoder(self.features(spec))  # (B, C, rows, F)
        h = self.to_frames(h.flatten(1, 2))  # (B, C, F)
        n = self.cfg.context_frames
        context = F.avg_pool1d(h, 2 * n + 1, stride=1, padding=n, count_include_pad=False) if n else h
        return h, context

    def log_gains(self, spec: torch.Tensor, family: torch.Tensor | None = None,
                  shift: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, K, F)`` complex -> band log-gains ``(B, N, F)`` (natural log); ``family``, ``shift`` ``(B,)``:
        the known round trip of each row (``condition.py``; ignored without ``condition``)."""
        return self._gains(*self.encode(spec), family, shift)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, T)`` -> the degradation classifier's logits ``(B, L, F)`` (``detection.py``; ValueError
        without ``detect``)."""
        return self._classifier()(self.encode(self.stft(x))[1])

    def _classifier(self) -> Detection:
        if self.detection is None:
            raise ValueError(f"classify: {NO_CLASSIFIER}")
        return self.detection

    def _gains(self, h: torch.Tensor, context: torch.Tensor, family: torch.Tensor | None,
               shift: torch.Tensor | None) -> torch.Tensor:
        if self.condition is not None:
            context = context + self.condition(len(h), family, shift)[:, :, None].to(context.dtype)
        g = self.to_gain(torch.cat([h, context], dim=1))  # (B, N, F)
        limit = self.cfg.max_gain_db * math.log(10) / 20
        return limit * torch.tanh(g / limit)

    def forward(self, x: torch.Tensor, family: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                classify: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, T) -> (B, 1, T)``; with ``classify``, also the classifier's logits ``(B, L, F)`` from the same
        encoding (ValueError without ``detect``)."""
        classifier = self._classifier() if classify else None
        spec = self.stft(x)
        h, context = self.encode(spec)
        g = self._gains(h, context, family, shift)
        gain = torch.exp(torch.einsum("kn,bnf->bkf", self.weights, g))  # (B, K, F)
        correction = torch.istft(spec * (gain - 1), self.cfg.n_fft, self.cfg.hop, window=self.window,
                                 center=True, length=x.shape[-1])
        y = x + correction[:, None].to(x.dtype)
        return (y, classifier(context)) if classify else y

    def frames_radius(self) -> int:
        """Frames on each side that one frame's gain depends on (conv kernels and the context mean)."""
        return len(self.FREQ_STRIDES) + 2 + self.cfg.context_frames  # k3 per conv2d, two k3 conv1d

    def input_span(self, s: Span) -> Span:
        """Input samples that output samples ``s`` depend on (signal boundaries ignored)."""
        n, hop = self.cfg.n_fft, self.cfg.hop
        # frame f's window is non-zero on f hop - n/2 + 1 .. f hop + n/2 - 1 (the periodic Hann's first value is 0)
        first = -((n // 2 - 1 - s[0]) // hop)
        last = (s[1] + n // 2 - 1) // hop
        r = self.frames_radius()
        return (first - r - 1) * hop - n // 2 + 1, (last + r) * hop + n // 2 - 1  # -1: the phase advance reads f - 1
