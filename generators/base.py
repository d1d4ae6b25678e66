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

from .receptive import Span, receptive_field


class Generator(nn.Module):
    """Subclasses set ``self.cfg`` (with ``total_stride``) and implement ``forward`` and ``input_span``."""

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

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def receptive_field(self) -> int:
        """Input samples one output sample depends on (widest over one stride period)."""
        return receptive_field(self.input_span, self.cfg.total_stride)
