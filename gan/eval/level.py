"""The level-matched baseline: one energy gain per file.

A phase-vocoder round trip loses much of the signal's energy, so a model that only turns
the volume up already moves every distance. The oracle gain shows what level alone buys:
the degraded input (or a model's output) scaled by the one gain that gives it the clean
reference's energy. Restoration is what a model does beyond its own output so matched.
"""
from __future__ import annotations

import numpy as np

SILENT = 1e-20  # mean square below which a signal counts as digital silence


def oracle_gain(x, reference) -> float:
    """``sqrt(sum(reference²) / sum(x²))`` for 1-D arrays of the same length: the gain that gives ``x``
    the reference's energy. 1.0 when either is digitally silent (nothing to match)."""
    x, reference = np.asarray(x, np.float64), np.asarray(reference, np.float64)
    ex, er = float(np.mean(x * x)), float(np.mean(reference * reference))
    if ex < SILENT or er < SILENT:
        return 1.0
    return float(np.sqrt(er / ex))
