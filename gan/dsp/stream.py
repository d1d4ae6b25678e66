"""The training data's ``torchaudio`` pitch shift, streamed: bounded memory for any length.

``gan.dsp.shifters.apply_shift`` holds the whole oversampled spectrogram (about 700 MiB per
30 s of mono audio for +12 semitones). This module computes the same signal block by
block, step for step:

    resample to cfg.oversample_rate ─▶ STFT (reflect-padded, centred frames)
      ─▶ phase vocoder in double precision, as ``gan.dsp.shifters.shift_torchaudio`` runs it (time
         steps ``arange(0, frames, rate)``; the accumulated phase carried from block to block)
      ─▶ overlap-add inverse STFT ─▶ resample by the pitch ratio ─▶ fit length ─▶ resample back

Only a block of STFT frames (``frames_per_block``) and a few windows of audio are held at
a time. The result equals ``apply_shift(x, rate, shift, cfg, "torchaudio")`` up to float
rounding (tested).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from gan.config import DegradeConfig
from gan.dsp.chunking import BlockReader, resample_blocks
from gan.dsp.shifters import pitch_resample_rates, work_rate


def fit_blocks(blocks: Iterator[torch.Tensor], channels: int, n: int) -> Iterator[torch.Tensor]:
    """Crop or zero-pad a stream of ``(C, m)`` blocks to ``n`` samples in all."""
    done = 0
    for b in blocks:
        if done >= n:
            break
        b = b[:, : n - done]
        done += b.shape[-1]
        yield b
    if done < n:
        yield torch.zeros(channels, n - done)


def _stretch_blocks(blocks: Iterator[torch.Tensor], channels: int, length: int, semitones: float,
                    cfg: DegradeConfig, frames_per_block: int) -> tuple[Iterator[torch.Tensor], int]:
    """Phase-vocoder time stretch by ``2 ** (-semitones / 12)``: ``length`` -> ``round(length / rate)``."""
    n_fft = cfg.n_fft
    hop = cfg.hop_length or n_fft // 4
    pad = n_fft // 2
    rate = 2.0 ** (-float(semitones) / 12)
    out_len = int(round(length / rate))
    if length <= pad:
        raise ValueError(f"stream_shift: {length} samples is too short to stream; use gan.dsp.shifters.apply_shift")

    def gen() -> Iterator[torch.Tensor]:
        window = torch.hann_window(n_fft, dtype=torch.float64)
        n_frames = 1 + length // hop
        steps = torch.arange(0, n_frames, rate, dtype=torch.float64)  # as torchaudio's phase_vocoder in double
        k, alphas = steps.long(), steps % 1.0
        advance = torch.linspace(0, math.pi * hop, n_fft // 2 + 1, dtype=torch.float64)[..., None]  # (F, 1)
        reader = BlockReader(blocks, channels)
        carry = None  # float64 (C, F): accumulated phase of the last output frame
        ola = torch.zeros(channels, 0)  # overlap-add of frames, samples [base, ...) of the padded output
        env = torch.zeros(0)
        base = 0
        for j0 in range(0, len(steps), frames_per_block):
            j1 = min(len(steps), j0 + frames_per_block)
            i0 = max(j0 - 1, 0)
            k0, k1 = int(k[i0]), int(k[j1 - 1]) + 2  # input frames the steps i0 .. j1-1 read
            spec = _frames(reader, k0, min(k1, n_frames), length, n_fft, hop, window)  # (C, F, frames)
            spec = torch.nn.functional.pad(spec, (0, k1 - k0 - spec.shape[-1]))  # zero frames past the end
            sel = k[i0:j1] - k0
            s0, s1 = spec[..., sel], spec[..., sel + 1]
            phase = s1.angle() - s0.angle() - advance
            phase = phase - 2 * math.pi * torch.round(phase / (2 * math.pi)) + advance  # (C, F, j1 - i0)
            if j0 == 0:
                inc = torch.cat([spec[..., :1].angle(), phase[..., : j1 - 1]], dim=-1)
                acc = torch.cumsum(inc, dim=-1)
            else:
                acc = carry[..., None] + torch.cumsum(phase[..., : j1 - j0], dim=-1)
            carry = acc[..., -1]
            a = alphas[j0:j1]
            off = j0 - i0
            mag = a * s1[..., off:].abs() + (1 - a) * s0[..., off:].abs()
            frames = (torch.fft.irfft(torch.polar(mag, acc), n=n_fft, dim=-2) * window[:, None]).float()
            # overlap-add frames j0 .. j1-1 into padded output samples [j0 * hop, (j1 - 1) * hop + n_fft)
            end = (j1 - 1) * hop + n_fft
            ola = torch.nn.functional.pad(ola, (0, end - base - ola.shape[-1]))
            env = torch.nn.functional.pad(env, (0, end - base - env.shape[-1]))
            span, s = end - j0 * hop, j0 * hop - base
            ola[:, s: s + span] += _overlap_add(frames, span, hop)
            env[s: s + span] += _overlap_add(window.float().square()[None, :, None].expand(1, n_fft, j1 - j0),
                                             span, hop)[0]
            done = end if j1 == len(steps) else j1 * hop  # later frames start at j1 * hop
            lo, hi = max(base, pad), min(done, pad + out_len)
            if hi > lo:
                yield ola[:, lo - base: hi - base] / env[lo - base: hi - base]
            ola, env, base = ola[:, done - base:], env[done - base:], done
        if end - pad < out_len:  # torch.istft pads a short result with zeros
            yield torch.zeros(channels, out_len - max(end - pad, 0))

    return gen(), out_len


def _overlap_add(frames: torch.Tensor, span: int, hop: int) -> torch.Tensor:
    """``(C, n_fft, frames)`` -> ``(C, span)``: frame ``j`` added at ``j * hop``."""
    n_fft = frames.shape[1]
    out = torch.nn.functional.fold(frames, (1, span), kernel_size=(1, n_fft), stride=(1, hop))  # (C, 1, 1, span)
    return out[:, 0, 0]


def _frames(reader: BlockReader, k0: int, k1: int, length: int, n_fft: int, hop: int,
            window: torch.Tensor) -> torch.Tensor:
    """STFT frames ``[k0, k1)`` of the reflect-padded, centred signal: ``(C, F, k1 - k0)``."""
    pad = n_fft // 2
    idx = torch.arange(k0 * hop, (k1 - 1) * hop + n_fft) - pad  # positions in the unpadded signal
    idx = idx.abs()
    idx = torch.where(idx >= length, 2 * (length - 1) - idx, idx)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    seg = reader.read(lo, hi)[:, idx - lo]  # (C, samples)
    spec = torch.stft(seg, n_fft, hop, n_fft, window.float(), center=False, return_complex=True)
    return spec.to(torch.complex128)  # the whole-signal shifter's STFT is float32, its vocoder double


def stream_shift(blocks: Iterator[torch.Tensor], channels: int, n: int, sample_rate: int, semitones: float,
                 cfg: DegradeConfig, frames_per_block: int = 1024) -> Iterator[torch.Tensor]:
    """``(C, m)`` blocks of a signal of ``n`` samples -> the same signal shifted, ``n`` samples in all.

    Equals ``gan.dsp.shifters.apply_shift(x, sample_rate, semitones, cfg, "torchaudio")``.
    """
    if semitones == 0:
        return blocks
    work = work_rate(sample_rate, cfg)
    up, n_up = resample_blocks(blocks, channels, n, sample_rate, work)
    stretched, n_st = _stretch_blocks(up, channels, n_up, semitones, cfg, frames_per_block)
    back, _ = resample_blocks(stretched, channels, n_st, *pitch_resample_rates(work, semitones))
    down, _ = resample_blocks(fit_blocks(back, channels, n_up), channels, n_up, work, sample_rate)
    return fit_blocks(down, channels, n)
