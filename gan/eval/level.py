"""The oracle gain: one level change per file, computed from the clean reference.

A round trip that loses level (a phase vocoder) is partly undone by a volume knob. To tell how
much of a model's improvement is level and how much is restoration, evaluation also scores the
*gain-matched* input and output: the signal scaled by the one gain that gives it the
reference's energy,

    g = sqrt(sum(ref^2) / sum(x^2))        gain_match(ref, 0.5 * ref) -> (ref, 2.0, None)

Zero energy on either side has no such gain: ``g = 1`` and a note says why.
"""
from __future__ import annotations

import math

import numpy as np


def oracle_gain(ref, x) -> tuple[float, str | None]:
    """``(T,) x2`` -> (``g``, note): ``g`` scales ``x`` to the energy of ``ref`` (sums of squares in float64).

    ``g = 1.0`` with a one-line note (else None) when ``x`` or ``ref`` is digitally silent or
    their energies are not finite: then no gain can match them.
    """
    e_ref = float(np.sum(np.square(np.asarray(ref, np.float64))))
    e_x = float(np.sum(np.square(np.asarray(x, np.float64))))
    if not (math.isfinite(e_ref) and math.isfinite(e_x)):
        return 1.0, "energy not finite, no oracle gain (gain 1)"
    if e_x == 0.0 or e_ref == 0.0:
        silent = "digitally silent" if e_x == 0.0 else "the reference is digitally silent"
        return 1.0, f"{silent}, no oracle gain (gain 1)"
    return math.sqrt(e_ref / e_x), None


def gain_match(ref, x) -> tuple[np.ndarray, float, str | None]:
    """``(T,) x2`` -> (``g * x`` as float32 ``(T,)``, ``g``, note) with ``g, note = oracle_gain(ref, x)``."""
    g, note = oracle_gain(ref, x)
    return (np.asarray(x, np.float64) * g).astype(np.float32), g, note
