"""What every generator shares: ``(B, 1, T) -> (B, 1, T)``, a parameter count, a receptive field,
and the residual output option.

Residual output (``residual: true`` in a generator's config): the network predicts a
correction that is added to its input, ``y = x + G(x)``, and the last conv starts at zero
(its weight-norm magnitude, or its weight), so an untrained generator is exactly the
identity and cannot make audio worse before it has learned anything (the same start as
ReZero, Bachlechner et al. 2020, and the zero-initialised last layers of DiT / ControlNet).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .band_gain import BandGain, BandGainConfig
from .detection import NO_CLASSIFIER
from .receptive import Span, conv_span, receptive_field, repeat_span, union


class Generator(nn.Module):
    """Subclasses set ``self.cfg`` (with ``total_stride`` and the U-Net's own ``unet_stride``) and implement
    ``restore`` (the network after the band gains) and ``input_span``."""

    def forward(self, x: torch.Tensor, family: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                classify: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, T) -> (B, 1, T)``: band gains first (when the config has them), then ``restore``.

        ``family``, ``shift`` ``(B,)``: what was done to each input when known, read by a conditioned
        encoder (``band_gain.condition``). ``classify``: also return the degradation classifier's
        logits ``(B, L, F)`` (``band_gain.detect``; ValueError without one), so that its loss is part of
        what the forward returned (DDP follows the outputs to the parameters that get gradients).
        """
        logits = None
        if self.band_gain is not None:
            x = self.band_gain(x, family, shift, classify=classify)  # the U-Net corrects what they leave
            if classify:
                x, logits = x
        elif classify:
            raise ValueError(f"classify: {NO_CLASSIFIER}")
        y = self.restore(x)
        return (y, logits) if classify else y

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_span(self, s: Span) -> Span:
        """Input samples that output samples ``s`` depend on (signal boundaries ignored)."""
        raise NotImplementedError

    def zero_output(self, conv: nn.Module) -> None:
        """Start ``conv`` (the last layer) at an exactly zero output: magnitude (weight norm) or weight, and bias."""
        with torch.no_grad():
            parametrizations = getattr(conv, "parametrizations", None)
            if parametrizations is not None and "weight" in parametrizations:
                parametrizations.weight.original0.zero_()  # magnitude g = 0 -> weight = 0, direction kept
            else:
                conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()

    def build_band_gain(self, cfg: BandGainConfig | None) -> None:
        """Band gains from a degradation encoder in front of the network (``generators/band_gain.py``);
        ``cfg`` None: none. The network then corrects, and passes on, the band-gained input."""
        self.band_gain = BandGain(cfg) if cfg is not None else None

    def band_gain_span(self, s: Span, out: Span) -> Span:
        """Span on the input of a span ``s`` on the band-gained input, for output span ``out``."""
        return self.band_gain.input_span(union(s, out)) if self.band_gain is not None else s

    def build_gain_path(self, bottom_channels: int, conv: nn.Module) -> None:
        """The gain path: ``conv`` (bottleneck channels -> 1, kernel 3, padding 1) predicts a gain per
        bottleneck frame; it starts at zero, so the gain starts at exactly 1."""
        self.gain_head = conv
        self.zero_output(conv)
        n = self.cfg.unet_stride
        tri = torch.cat([torch.arange(1, n + 1), torch.arange(n - 1, 0, -1)]).float() / n**2  # sums to 1
        self.register_buffer("gain_smoothing", tri.view(1, 1, -1), persistent=False)  # (1, 1, 2n - 1)

    def gain_envelope(self, bottom: torch.Tensor) -> torch.Tensor:
        """Bottleneck ``(B, C, T' / S)`` -> ``a`` ``(B, 1, T')``: one value per frame, held for its ``S``
        samples, then smoothed by a triangle two frames wide (piecewise linear between frames)."""
        n = self.cfg.unet_stride
        a = torch.repeat_interleave(self.gain_head(bottom), n, dim=-1)  # (B, 1, T')
        a = F.pad(a, (n - 1, n - 1), mode="replicate")
        return F.conv1d(a, self.gain_smoothing.to(a.dtype))  # (B, 1, T')

    def gain_frames_span(self, s: Span) -> Span:
        """Span on the bottleneck features of a span on the gain envelope."""
        n = self.cfg.unet_stride
        return conv_span(repeat_span(conv_span(s, 2 * n - 1, 1, n - 1), n), 3, 1, 1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def receptive_field(self) -> int:
        """Input samples one output sample depends on (widest over one stride period)."""
        return receptive_field(self.input_span, self.cfg.total_stride)
