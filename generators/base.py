"""What every generator shares: ``(B, 1, T) -> (B, 1, T)``, a parameter count, a receptive field."""
from __future__ import annotations

import torch.nn as nn

from .receptive import Span, receptive_field


class Generator(nn.Module):
    """Subclasses set ``self.cfg`` (with ``total_stride``) and implement ``forward`` and ``input_span``."""

    def input_span(self, s: Span) -> Span:
        """Input samples that output samples ``s`` depend on (signal boundaries ignored)."""
        raise NotImplementedError

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def receptive_field(self) -> int:
        """Input samples one output sample depends on (widest over one stride period)."""
        return receptive_field(self.input_span, self.cfg.total_stride)
