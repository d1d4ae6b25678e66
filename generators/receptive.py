"""Exact receptive fields by walking input spans back through a network.

A span ``(a, b)`` is the closed range of positions of a feature map. Each helper
maps a span on a layer's output to the span of the layer's input it depends on
(boundary padding ignored, i.e. an infinitely long signal). A model composes them
from its output back to its input and unions the spans of merging branches.
"""
from __future__ import annotations

from typing import Callable

Span = tuple[int, int]


def conv_span(s: Span, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Span:
    """``out[i]`` reads ``in[i * stride - padding + j * dilation]`` for ``j < kernel``."""
    a, b = s
    return a * stride - padding, b * stride - padding + (kernel - 1) * dilation


def conv_transpose_span(s: Span, kernel: int, stride: int, padding: int = 0) -> Span:
    """``out[o]`` reads ``in[i]`` for every ``i`` with ``0 <= o + padding - i * stride < kernel``."""
    a, b = s
    return -((kernel - 1 - a - padding) // stride), (b + padding) // stride


def repeat_span(s: Span, factor: int) -> Span:
    """Nearest upsampling or un-patching: ``out[i]`` reads ``in[i // factor]``."""
    return s[0] // factor, s[1] // factor


def patch_span(s: Span, factor: int) -> Span:
    """Patching ``(B, 1, T) -> (B, f, T // f)``: position ``i`` holds samples ``i f .. i f + f - 1``."""
    return s[0] * factor, s[1] * factor + factor - 1


def union(s: Span, t: Span) -> Span:
    return min(s[0], t[0]), max(s[1], t[1])


def receptive_field(span_of_output: Callable[[Span], Span], period: int) -> int:
    """Widest input span (in samples) of one output sample, over one period of the network."""
    widths = []
    for t in range(period):
        a, b = span_of_output((t, t))
        widths.append(b - a + 1)
    return max(widths)
