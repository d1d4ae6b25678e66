"""Reconstruction losses: multi-scale log-mel L1 (DAC's), waveform L1, MR-STFT, SI-SDR.

``MultiScaleMelLoss`` equals ``dac.nn.loss.MelSpectrogramLoss`` with the same
settings (hann window, hop = window / 4, centred reflect-padded STFT, librosa
Slaney mel filters, ``log10(clamp(mel, eps) ** pow)``, L1 means summed over
scales) but works on plain tensors: windows and filterbanks are buffers built
once, estimate and reference share one FFT per scale, and the backward pass of
magnitude -> mel -> log -> L1 -> FFT is written by hand, which makes it faster
than DAC's (see ``python launch/bench.py losses``). It always runs in float32,
also under bf16 autocast.

    loss = MultiScaleMelLoss(MelLossConfig())(est, ref)      # (B, 1, T) x2 -> scalar
    total, terms = GeneratorReconstruction(cfg.loss, cfg.loss_weights)(est, ref)
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from gan.config import LossConfig, LossWeights, MelLossConfig

_LN10 = math.log(10.0)


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 / 200 mel per Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, hz * 3.0 / 200.0)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * 200.0 / 3.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Slaney-normalised triangular mel filters, float32 (n_mels, n_fft // 2 + 1).

    The filters of ``librosa.filters.mel`` (librosa's defaults, which audiotools and so
    DAC use), rounded the same way: triangles to float32, then the area normalisation.
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # (F,)
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(fmin), _hz_to_slaney_mel(fmax), n_mels + 2))
    widths = np.diff(edges)  # (n_mels + 1,)
    offsets = edges[:, None] - bin_hz[None, :]  # (n_mels + 2, F)
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    tri = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (edges[2:] - edges[:-2])
    return (tri * area[:, None]).astype(np.float32)


def _hann(n: int) -> torch.Tensor:
    """Periodic hann window, float32, equal to audiotools' (scipy's) to the bit."""
    return torch.hann_window(n, periodic=True, dtype=torch.float64).float()


def _frames(x: torch.Tensor, window_length: int) -> torch.Tensor:
    """Centred, reflect-padded STFT frames as a view: (R, T) -> (R, 1 + T // hop, window)."""
    pad = window_length // 2
    if x.shape[-1] <= pad:
        raise ValueError(
            f"MultiScaleMelLoss: signals of {x.shape[-1]} samples are too short for a "
            f"{window_length}-sample window; use at least {pad + 1} samples or smaller windows"
        )
    padded = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)  # (R, T + 2 * pad)
    return padded.unfold(-1, window_length, window_length // 4)


class _MelDistance(torch.autograd.Function):
    """One scale of the mel loss, from frames to a scalar, with a hand-written backward.

    forward(est_frames (R, N, W), ref_frames (R, N, W), window (W,), fb_t (F, M),
    bin_weight (F,), eps, log_weight, mag_weight, pow) ->
    log_weight * mean|pow * (log10 clamp(mel_e) - log10 clamp(mel_r))| + mag_weight * mean|mel_e - mel_r|
    with mel = |rfft(frames * window)| @ fb_t.
    """

    @staticmethod
    def forward(ctx, est, ref, window, fb_t, bin_weight, eps, log_weight, mag_weight, pow):
        r = est.shape[0]
        frames = est.new_empty((2 * r, *est.shape[1:]))  # (2R, N, W): estimate, then reference
        torch.mul(est, window, out=frames[:r])
        torch.mul(ref, window, out=frames[r:])
        spec = torch.fft.rfft(frames)  # (2R, N, F) complex
        ri = torch.view_as_real(spec)  # (2R, N, F, 2)
        mag = torch.addcmul(ri[..., 0] * ri[..., 0], ri[..., 1], ri[..., 1]).sqrt_()  # |spec|
        mel = mag @ fb_t  # (2R, N, M)
        loss = mel.new_zeros(())
        d_log = d_mag = None
        if log_weight != 0:
            log_mel = mel.clamp(min=eps).log10_()
            d_log = (log_mel[:r] - log_mel[r:]).mul_(pow)
            loss = loss + log_weight * d_log.abs().mean()
        if mag_weight != 0:
            d_mag = mel[:r] - mel[r:]
            loss = loss + mag_weight * d_mag.abs().mean()
        ctx.save_for_backward(spec, mag, mel, window, fb_t, bin_weight, d_log, d_mag)
        ctx.consts = (eps, log_weight, mag_weight, pow, est.shape[-1])
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        spec, mag, mel, window, fb_t, bin_weight, d_log, d_mag = ctx.saved_tensors
        eps, log_weight, mag_weight, pow, n_fft = ctx.consts
        r = spec.shape[0] // 2
        grads = []
        for half, sign, needed in ((slice(0, r), 1.0, ctx.needs_input_grad[0]),
                                   (slice(r, 2 * r), -1.0, ctx.needs_input_grad[1])):
            if not needed:
                grads.append(None)
                continue
            m = mel[half]
            g_mel = torch.zeros_like(m)  # dL/dmel (R, N, M)
            if d_log is not None:
                c = sign * grad * log_weight * pow / (d_log.numel() * _LN10)
                g_log = torch.sign(d_log).mul_(c).div_(m.clamp(min=eps))
                g_mel += g_log.masked_fill_(m < eps, 0.0)
            if d_mag is not None:
                g_mel += torch.sign(d_mag).mul_(sign * grad * mag_weight / d_mag.numel())
            g_mag = g_mel @ fb_t.t()  # (R, N, F)
            a = mag[half]
            scale = torch.where(a > 0, g_mag / a, 0.0).mul_(bin_weight)
            # adjoint of the one-sided real FFT: n_fft * irfft with the inner bins halved
            g_spec = torch.view_as_complex(torch.view_as_real(spec[half]) * scale.unsqueeze(-1))
            g_frames = torch.fft.irfft(g_spec, n=n_fft)  # (R, N, W)
            grads.append(g_frames.mul_(window))
        return (*grads, None, None, None, None, None, None, None)


class MultiScaleMelLoss(nn.Module):
    """DAC's multi-scale mel distance on plain tensors: (B, C, T) x2 -> scalar.

    One term per (n_mels, window) pair, hop = window // 4, summed over scales.
    """

    def __init__(self, cfg: MelLossConfig | None = None, sample_rate: int = 48000):
        super().__init__()
        cfg = cfg or MelLossConfig()
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.window_lengths = list(cfg.window_lengths)
        for i, (w, n_mels, fmin, fmax) in enumerate(zip(cfg.window_lengths, cfg.n_mels, cfg.mel_fmin, cfg.mel_fmax)):
            if w < 4 or w % 4:
                raise ValueError(f"loss.mel.window_lengths: {w} must be a positive multiple of 4")
            fb = mel_filterbank(sample_rate, w, n_mels, fmin, fmax)  # (M, F)
            bins = np.full(w // 2 + 1, w / 2.0)
            bins[0] = bins[-1] = w
            self.register_buffer(f"window_{i}", _hann(w), persistent=False)
            self.register_buffer(f"fb_t_{i}", torch.from_numpy(fb).float().t().contiguous(), persistent=False)
            self.register_buffer(f"bin_weight_{i}", torch.from_numpy(bins).float(), persistent=False)

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B, C, T) estimate and reference -> scalar mel distance (float32)."""
        if est.shape != ref.shape:
            raise ValueError(f"MultiScaleMelLoss: estimate {tuple(est.shape)} and reference {tuple(ref.shape)} differ")
        c = self.cfg
        with torch.autocast(device_type=est.device.type, enabled=False):
            est = est.float().reshape(-1, est.shape[-1])  # (B * C, T)
            ref = ref.float().reshape(-1, ref.shape[-1])
            loss = est.new_zeros(())
            for i, w in enumerate(self.window_lengths):
                loss = loss + _MelDistance.apply(
                    _frames(est, w), _frames(ref, w), getattr(self, f"window_{i}").float(),
                    getattr(self, f"fb_t_{i}").float(), getattr(self, f"bin_weight_{i}").float(),
                    c.clamp_eps, c.log_weight, c.mag_weight, c.pow,
                )
        return loss


def l1_loss(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Waveform L1: mean |est - ref| over all samples (any matching shapes) -> scalar."""
    return F.l1_loss(est.float(), ref.float())


class MRSTFTLoss(nn.Module):
    """``auraloss``' multi-resolution STFT loss (spectral convergence + log magnitude) with
    window = FFT size and hop = FFT size // 4, in float32: (B, C, T) x2 -> scalar."""

    def __init__(self, fft_sizes: list[int]):
        super().__init__()
        from auraloss.freq import MultiResolutionSTFTLoss

        self.loss = MultiResolutionSTFTLoss(
            fft_sizes=list(fft_sizes), hop_sizes=[n // 4 for n in fft_sizes], win_lengths=list(fft_sizes)
        )

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=est.device.type, enabled=False):
            return self.loss(est.float(), ref.float())


class LogSpectralLoss(nn.Module):
    """Multi-resolution log-spectral distance: ``(B, C, T) x2 -> scalar``.

    Per resolution n (Hann window n, hop n / 4, unnormalised as ``gan.eval.metrics.lsd``): the
    mean over frames of ``sqrt(mean_f (log10 P_ref - log10 P_est)^2)``, powers floored at
    ``floor`` (1e-10, as the metric); the mean over resolutions. Unlike the mel loss
    (magnitude floor 1e-5 on mel bands) and auraloss' log magnitude (power floor 1e-8), it
    sees every linear-frequency bin down to the metric's floor: noise a model adds to an
    empty band or a quiet passage. LSD as in Gray & Markel (1976); at one resolution of
    2048 it equals ``gan.eval.metrics.log_spectral_distance`` (tested).
    """

    def __init__(self, fft_sizes: list[int], floor: float = 1e-10, eps: float = 1e-8):
        super().__init__()
        self.fft_sizes, self.floor, self.eps = list(fft_sizes), floor, eps
        for n in self.fft_sizes:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=est.device.type, enabled=False):
            est, ref = est.float().reshape(-1, est.shape[-1]), ref.float().reshape(-1, ref.shape[-1])  # (B*C, T)
            total = est.new_zeros(())
            for n in self.fft_sizes:
                window = getattr(self, f"window_{n}")
                power = [torch.stft(x, n, n // 4, window=window, return_complex=True).abs().square()
                         for x in (est, ref)]  # (B*C, n // 2 + 1, frames)
                diff = torch.log10(power[1].clamp_min(self.floor)) - torch.log10(power[0].clamp_min(self.floor))
                total = total + (diff.square().mean(dim=1) + self.eps).sqrt().mean()
            return total / len(self.fft_sizes)


def si_sdr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB per example: (B, ...) x2 -> (B,), zero-mean signals.

    10 log10(|a r|^2 / |e - a r|^2) with a = <e, r> / <r, r>; ``eps`` keeps silence finite.
    """
    est = est.float().reshape(est.shape[0], -1)
    ref = ref.float().reshape(ref.shape[0], -1)
    est = est - est.mean(dim=-1, keepdim=True)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / ((ref * ref).sum(-1, keepdim=True) + eps)
    target = alpha * ref
    noise = est - target
    return 10.0 * torch.log10(((target * target).sum(-1) + eps) / ((noise * noise).sum(-1) + eps))


def si_sdr_loss(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative mean SI-SDR (dB), for minimising: (B, ...) x2 -> scalar."""
    return -si_sdr(est, ref, eps).mean()


class GeneratorReconstruction(nn.Module):
    """The weighted reconstruction terms of the generator loss (``mel``, ``l1``, ``mrstft``, ``lsd``).

    A term whose weight is 0 is neither built nor computed. ``forward(est, ref)`` with
    (B, 1, T) tensors returns ``(total, terms)``: ``total`` = sum of weight * term (a
    scalar that carries gradients) and ``terms`` the unweighted, detached values keyed
    by the logged names.
    """

    def __init__(self, loss_cfg: LossConfig, weights: LossWeights, sample_rate: int = 48000):
        super().__init__()
        self.weights = {"mel": weights.mel, "l1": weights.l1, "mrstft": weights.mrstft, "lsd": weights.lsd}
        self.mel = MultiScaleMelLoss(loss_cfg.mel, sample_rate) if weights.mel else None
        self.mrstft = MRSTFTLoss(loss_cfg.mrstft_fft_sizes) if weights.mrstft else None
        self.lsd = LogSpectralLoss(loss_cfg.lsd_fft_sizes) if weights.lsd else None

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fns = {"mel": self.mel, "l1": l1_loss, "mrstft": self.mrstft, "lsd": self.lsd}
        total = est.new_zeros((), dtype=torch.float32)
        terms = {}
        for name, weight in self.weights.items():
            if weight:
                value = fns[name](est, ref).float()
                total = total + weight * value
                terms[name] = value.detach()
        return total, terms
