"""Streaming any length through a map of bounded reach, window by window, equal to one whole call.

A map (the generator, a resampler) whose output sample depends on a bounded
neighbourhood of input samples and whose structure repeats every ``align`` input
samples is run on windows that start on multiples of ``align`` and carry ``context``
samples (>= the receptive radius) on each side; only the central part of each window's
output is kept (valid-padding stitching). The first window starts at 0 and the last
ends at the end of the signal, so the borders see exactly the zero padding of a
whole-signal call.

    blocks, n_out = resample_blocks(tensor_blocks(x), channels=1, n_in=x.shape[-1], orig=44100, new=48000)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torchaudio.functional as AF

from gan.dsp.audio import READ_BLOCK, AudioError
from gan.dsp.shifters import MAX_KERNEL_SIZE, sinc_kernel_size


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class Window:
    start: int  # input window [start, end)
    end: int
    keep_start: int  # kept output, in output coordinates [keep_start, keep_end)
    keep_end: int
    offset: int  # where keep_start lies in this window's output


def plan_windows(n_in: int, n_out: int, hop: int, context: int, num: int = 1, den: int = 1) -> list[Window]:
    """Windows for a map with ``num`` output samples per ``den`` input samples.

    ``hop`` and ``context`` must be multiples of the map's input period; ``den`` must
    divide ``hop`` and ``context``. The last window ends at ``n_in`` and keeps up to ``n_out``.
    """
    if hop % den or context % den:
        raise ValueError(f"hop {hop} and context {context} must be multiples of {den}")
    windows = []
    for k in range(max(1, math.ceil(n_in / hop))):
        a, b = k * hop, min((k + 1) * hop, n_in)
        w0, w1 = max(0, a - context), min(n_in, b + context)
        out_a = a * num // den
        out_b = n_out if b == n_in else b * num // den
        windows.append(Window(w0, w1, out_a, out_b, out_a - w0 * num // den))
    return windows


class BlockReader:
    """Reads nondecreasing ranges ``[start, end)`` from a stream of ``(C, n)`` blocks.

    Only samples a later read can still ask for are kept, so memory is bounded by the
    largest window, not the stream.
    """

    def __init__(self, blocks: Iterator[torch.Tensor], channels: int):
        self._blocks = blocks
        self._buf = torch.zeros(channels, 0)
        self._buf_start = 0

    def read(self, start: int, end: int) -> torch.Tensor:
        if start < self._buf_start:
            raise ValueError(f"read [{start}, {end}) starts before retained sample {self._buf_start}")
        parts, have = [self._buf], self._buf_start + self._buf.shape[-1]
        while have < end:
            block = next(self._blocks, None)
            if block is None:
                raise ValueError(f"stream ended at sample {have}, read asked for {end}")
            parts.append(block)
            have += block.shape[-1]
        buf = torch.cat(parts, dim=-1) if len(parts) > 1 else self._buf
        self._buf, self._buf_start = buf[:, start - self._buf_start:], start
        return self._buf[:, : end - start]


def chunked_map(blocks: Iterator[torch.Tensor], channels: int, n_in: int, n_out: int,
                fn: Callable[[torch.Tensor], torch.Tensor], hop: int, context: int, num: int = 1, den: int = 1,
                batch: int = 1, on_window: Callable[[int], None] | None = None) -> Iterator[torch.Tensor]:
    """Apply ``fn`` ``(k, C, L) -> (k, C, ceil(L * num / den))`` window by window; yields ``(C, n)``.

    Windows of equal length are batched up to ``batch``. ``on_window(n)`` reports each
    window's kept output samples (progress).
    """
    if n_in == 0:
        return
    reader = BlockReader(blocks, channels)
    pending: list[tuple[Window, torch.Tensor]] = []

    def flush():
        y = fn(torch.stack([x for _, x in pending]))  # (k, C, L) -> (k, C, L_out)
        for i, (w, _) in enumerate(pending):
            yield y[i, :, w.offset: w.offset + w.keep_end - w.keep_start]
            if on_window is not None:
                on_window(w.keep_end - w.keep_start)
        pending.clear()

    for w in plan_windows(n_in, n_out, hop, context, num, den):
        if pending and (len(pending) == batch or pending[0][0].end - pending[0][0].start != w.end - w.start):
            yield from flush()
        pending.append((w, reader.read(w.start, w.end)))
    if pending:
        yield from flush()


def _resample_ratio(orig: int, new: int) -> tuple[int, int, int]:
    """(num, den, context) of the sinc resampler ``orig -> new`` (torchaudio's default kernel)."""
    g = math.gcd(orig, new)
    num, den = new // g, orig // g
    if sinc_kernel_size(orig, new) > MAX_KERNEL_SIZE:
        raise AudioError(f"sample rate {orig} Hz: no exact short ratio to {new} Hz; convert the file "
                         f"to a standard rate (44100, 48000, ...) first")
    # torchaudio: width = ceil(6 * den / (0.99 * min(num, den))) input samples each side, plus one period.
    width = math.ceil(6 * den / (0.99 * min(num, den)))
    return num, den, round_up(width + den, den) + den


def resample_blocks(blocks: Iterator[torch.Tensor], channels: int, n_in: int, orig: int, new: int,
                    hop: int = 1 << 19) -> tuple[Iterator[torch.Tensor], int]:
    """Stream ``orig -> new`` Hz resampling equal to ``torchaudio.functional.resample`` of the whole.

    ``(C, n_in)`` blocks -> (blocks, n_out) with ``n_out = ceil(n_in * new / orig)``; ``hop``
    input samples per window.
    """
    if orig == new:
        return blocks, n_in
    num, den, context = _resample_ratio(orig, new)
    n_out = -(-n_in * num // den)  # exact; torchaudio rounds this length in float32

    def fn(x: torch.Tensor) -> torch.Tensor:
        # the appended zeros equal the zero padding the whole-signal call applies at the end;
        # they only make the last window long enough for its exactly rounded length
        return AF.resample(torch.nn.functional.pad(x, (0, den)), orig, new)

    hop = round_up(max(hop, den), den)
    return chunked_map(blocks, channels, n_in, n_out, fn, hop, context, num, den), n_out


def tensor_blocks(x: torch.Tensor, size: int = READ_BLOCK) -> Iterator[torch.Tensor]:
    """``(C, T)`` -> consecutive ``(C, <= size)`` views."""
    for i in range(0, x.shape[-1], size):
        yield x[:, i: i + size]
