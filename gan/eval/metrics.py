"""Objective quality metrics of enhanced (or degraded) audio against a clean reference.

All functions take mono 48 kHz signals as 1-D arrays or tensors of equal length.

- ``lsd``: log-spectral distance, mean over STFT frames (2048 / hop 512, Hann) of
  ``sqrt(mean_f (log10 P_ref - log10 P_est)^2)``, powers floored at 1e-10 (lower is better).
- ``mel``: the multi-scale mel distance of training (``gan.losses.reconstruction.MultiScaleMelLoss``
  with the run's ``loss.mel`` settings), so validation and evaluation agree (lower is better).
- ``mrstft``: auraloss' multi-resolution STFT distance at the run's ``loss.mrstft_fft_sizes``.
- ``si_sdr``: scale-invariant SDR in dB (``gan.losses.reconstruction.si_sdr``). After a phase-vocoder
  round trip it sits far below 0 dB even for intelligible audio (phase is not restored),
  so it is reported for comparison with earlier work, not as the headline.
- optional, skipped with a note when not installed (``pip install -e '.[metrics]'``):
  ``visqol`` (ViSQOL v3 audio mode at 48 kHz, MOS-LQO), and at 16 kHz ``pesq`` (wide band),
  ``stoi`` and ``dnsmos`` (overall MOS; non-intrusive, the reference is not used).

The improvement of a metric is signed so that a positive number always means better:
``enhanced - degraded`` for higher-is-better metrics, ``degraded - enhanced`` otherwise.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from typing import Callable

import numpy as np
import torch

from gan.errors import first_line
from gan.log import get_logger

log = get_logger(__name__)

CORE = ("lsd", "mel", "mrstft", "si_sdr")
EXTRA = ("visqol", "pesq", "stoi", "dnsmos")
SPEECH = ("pesq", "stoi", "dnsmos")  # speech models: run on music only when asked for by name
HIGHER_IS_BETTER = {"lsd": False, "mel": False, "mrstft": False, "si_sdr": True,
                    "visqol": True, "pesq": True, "stoi": True, "dnsmos": True}
_EXTRA_MODULES = {"visqol": ["visqol"], "pesq": ["pesq"], "stoi": ["pystoi"],
                  "dnsmos": ["speechmos", "onnxruntime", "librosa"]}
RATE = 48000


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def log_spectral_distance(ref, est, n_fft: int = 2048, hop: int = 512, floor: float = 1e-10) -> float:
    """``(T,) x2 -> float``; log10 power spectra, RMS over frequency, mean over frames."""
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = [torch.stft(_t(x).double(), n_fft, hop, window=window, return_complex=True).abs().square()
            for x in (ref, est)]  # (F, frames)
    diff = torch.log10(spec[0].clamp_min(floor)) - torch.log10(spec[1].clamp_min(floor))
    return float(diff.square().mean(dim=0).sqrt().mean())


def si_sdr_db(ref, est) -> float:
    from gan.losses.reconstruction import si_sdr

    return float(si_sdr(_t(est)[None], _t(ref)[None])[0])


def resample_16k(x) -> np.ndarray:
    import torchaudio.functional as AF

    return AF.resample(_t(x), RATE, 16000).double().numpy()


def extra_available(name: str) -> str | None:
    """None when the optional metric can run, else why not."""
    missing = [m for m in _EXTRA_MODULES[name] if importlib.util.find_spec(m) is None]
    return f"not installed ({', '.join(missing)}); pip install -e '.[metrics]'" if missing else None


class MetricSuite:
    """Scores ``(ref, est)`` pairs with the chosen metrics; optional ones are skipped when missing.

    ``names=None`` selects the core metrics and ViSQOL (audio mode) when installed; the speech
    metrics (PESQ, STOI, DNSMOS) run only when named.
    """

    def __init__(self, names: list[str] | None = None, loss_cfg=None):
        from gan.config import LossConfig

        loss_cfg = loss_cfg or LossConfig()
        wanted = list(names) if names is not None else [*CORE, *(m for m in EXTRA if m not in SPEECH)]
        unknown = [n for n in wanted if n not in HIGHER_IS_BETTER]
        if unknown:
            raise ValueError(f"metrics {unknown}: unknown; known: {[*CORE, *EXTRA]}")
        self.skipped = {n: why for n in wanted if n in EXTRA and (why := extra_available(n))}
        self.names = [n for n in wanted if n not in self.skipped]
        self._loss_cfg = loss_cfg
        self._fns: dict[str, Callable] = {}

    def _fn(self, name: str) -> Callable:
        if name not in self._fns:
            self._fns[name] = self._build(name)
        return self._fns[name]

    def _build(self, name: str) -> Callable:
        if name == "lsd":
            return log_spectral_distance
        if name == "si_sdr":
            return si_sdr_db
        if name in ("mel", "mrstft"):
            from gan.losses.reconstruction import MRSTFTLoss, MultiScaleMelLoss

            loss = (MultiScaleMelLoss(self._loss_cfg.mel, RATE) if name == "mel"
                    else MRSTFTLoss(self._loss_cfg.mrstft_fft_sizes))
            return lambda ref, est: float(loss(_t(est)[None, None], _t(ref)[None, None]))
        if name == "visqol":
            from visqol.api import VisqolApi

            api = VisqolApi()
            api.create(mode="audio")
            return lambda ref, est: float(api.measure_from_arrays(_np(ref), _np(est), RATE).moslqo)
        if name == "pesq":
            from pesq import pesq

            return lambda ref, est: float(pesq(16000, resample_16k(ref), resample_16k(est), "wb"))
        if name == "stoi":
            from pystoi import stoi

            return lambda ref, est: float(stoi(resample_16k(ref), resample_16k(est), 16000))
        from speechmos import dnsmos

        return lambda ref, est: float(dnsmos.run(np.clip(resample_16k(est), -1, 1), 16000)["ovrl_mos"])

    def score(self, ref, est, name: str = "") -> dict[str, float]:
        """Every selected metric of ``est`` against ``ref``; a metric that fails on this pair gives NaN and a
        one-line note naming ``name`` (the example)."""
        ref, est = _t(ref).reshape(-1), _t(est).reshape(-1)
        if ref.shape != est.shape:
            raise ValueError(f"metrics: reference {tuple(ref.shape)} and estimate {tuple(est.shape)} differ")
        out = {}
        for metric in self.names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[metric] = self._fn(metric)(ref, est)
            except Exception as e:  # e.g. PESQ on silence ("no utterances detected")
                log.warning("note: %smetric %s: %s; NaN", f"{name}: " if name else "", metric, first_line(e))
                out[metric] = math.nan
        return out


def improvement(name: str, degraded: float, enhanced: float) -> float:
    """Positive = better, whatever the metric's direction."""
    return enhanced - degraded if HIGHER_IS_BETTER[name] else degraded - enhanced


def relative_change(name: str, before: float, after: float) -> float:
    """``improvement(name, before, after) / |before|``: + = better, 0.05 = 5 % closer; NaN when ``before`` is 0."""
    return improvement(name, before, after) / abs(before) if before else math.nan


# --------------------------------------------------------------------------- statistics


def summarize(values) -> dict[str, float]:
    """mean, std (sample), median, min, max over the finite values, and their count ``n``."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def paired_test(a, b, higher_is_better: bool = True, alpha: float = 0.05) -> dict:
    """Paired comparison of per-example scores ``b`` vs ``a`` (same examples, same order).

    Returns the mean difference ``b - a``, its 95% t confidence interval, the p-values
    of scipy's ``ttest_rel`` and ``wilcoxon``, and which side is significantly better
    (``"a"``, ``"b"`` or ``"neither"``). Pairs with a NaN on either side are dropped.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    d = b[keep] - a[keep]
    n = int(d.size)
    res = {"n": n, "mean_a": float(a[keep].mean()) if n else math.nan,
           "mean_b": float(b[keep].mean()) if n else math.nan, "mean_diff": float(d.mean()) if n else math.nan}
    if n < 2:
        return {**res, "ci95": [math.nan, math.nan], "t_p": math.nan, "wilcoxon_p": math.nan, "better": "neither",
                "note": "fewer than 2 paired examples"}
    if not np.any(d):
        return {**res, "ci95": [0.0, 0.0], "t_p": 1.0, "wilcoxon_p": 1.0, "better": "neither",
                "note": "identical scores"}
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_p = float(stats.ttest_rel(b[keep], a[keep]).pvalue)
        w_p = float(stats.wilcoxon(d).pvalue)
    better = "neither"
    if t_p < alpha and np.isfinite(t_p):
        better = "b" if (d.mean() > 0) == higher_is_better else "a"
    return {**res, "ci95": [res["mean_diff"] - half, res["mean_diff"] + half], "t_p": t_p, "wilcoxon_p": w_p,
            "better": better}


def smallest_p(n: int) -> float:
    """The smallest p-value a one-sided exact Wilcoxon signed-rank test of ``n`` pairs can give: ``2^-n``
    (every difference of one sign)."""
    return 2.0 ** -n


def pairs_needed(alpha: float) -> int:
    """The fewest pairs whose smallest one-sided p is below ``alpha``: 7 for 0.01, 5 for 0.05."""
    return math.floor(math.log2(1 / alpha)) + 1


def too_few_note(n: int, alpha: float = 0.01) -> str | None:
    """A one-line note when ``n`` pairs cannot reach ``p < alpha`` whatever the data; None otherwise."""
    if smallest_p(n) < alpha:
        return None
    return (f"{n} examples cannot reach p < {alpha:g} (the smallest one-sided Wilcoxon p is 2^-{n} = "
            f"{smallest_p(n):.3g}): score {pairs_needed(alpha)} or more, e.g. more files or a cache's val split "
            "(--data <cache>)")


def one_sided_p(degraded, enhanced, higher_is_better: bool) -> tuple[float, float]:
    """Paired Wilcoxon signed-rank p-values for "enhanced is better" and for "enhanced is worse"."""
    from scipy import stats

    d, e = np.asarray(degraded, np.float64), np.asarray(enhanced, np.float64)
    keep = np.isfinite(d) & np.isfinite(e)
    gain = (e - d)[keep] if higher_is_better else (d - e)[keep]  # > 0: better
    if gain.size < 2 or not np.any(gain):
        return math.nan, math.nan
    return (float(stats.wilcoxon(gain, alternative="greater").pvalue),
            float(stats.wilcoxon(gain, alternative="less").pvalue))
