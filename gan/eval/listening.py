"""Listening report of an evaluation: one folder that opens from disk in a browser.

    writer = ListeningReport("listen/", blind=False)
    report = evaluate(["runs/demo"], "data/heldout", on_example=writer.add)   # gan.eval.evaluation
    writer.finish(report)   # -> listen/index.html

The folder holds ``index.html`` (inline CSS and JS, no server, no network),
``audio/NNNN_<version>.ogg`` (Ogg Vorbis through soundfile, or MP3) and ``spec/NNNN.png``
(the versions' mel spectrograms side by side, one colour scale). Files are written as the
evaluation runs, so memory holds one example at a time whatever the number of examples.

**Loudness-matched playback.** Every version of an example (clean, degraded, each
checkpoint's output) is scaled to the same integrated loudness (ITU-R BS.1770,
``torchaudio.functional.loudness``), ``TARGET_LUFS`` unless a version's sample peak would
then exceed ``PEAK_CEILING_DB``: that example is played at the lower loudness that keeps
every peak at the ceiling, and its section says so. Nothing is clipped, and a louder
version never sounds better by accident. Metrics and the JSON report are of the unscaled
audio; the spectrograms show what is played.

**Blind mode** (``blind=True``): per example the page plays the two versions compared
(degraded vs enhanced with one checkpoint, enhanced A vs enhanced B with two) as "A" and
"B" in an order drawn from ``numpy.random.default_rng(seed)``, with the clean reference,
and asks which is closer to it. The audio files are named by the blind letters, and the
page shows no metrics or spectrograms. The listener downloads an answers file that
``gan.eval.listening_results`` unblinds; ``report["listening"]["order"]`` keeps the order
for the experimenter.
"""
from __future__ import annotations

import hashlib
import math
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from gan.errors import UnshiftError
from gan.eval.listening_results import ORDERS, blind_key

RATE = 48000
TARGET_LUFS = -23.0  # EBU R 128 programme loudness
PEAK_CEILING_DB = -1.0  # dBFS sample peak: 1 dB of room for the lossy codec's overshoot
GATE_BLOCK_S = 0.4  # BS.1770 gating block
AUDIO_FORMATS = {  # name -> (soundfile format, subtype, compression level: 0 = best quality)
    "ogg": ("OGG", "VORBIS", 0.1),
    "mp3": ("MP3", "MPEG_LAYER_III", 0.1),
}
REPORT_FILES = ("index.html", "audio", "spec")


class ListeningReportError(UnshiftError, ValueError):
    """A report folder that cannot be written, or an unknown audio format."""


def integrated_loudness(x, rate: int = RATE) -> float:
    """``(T,)`` -> integrated loudness in LUFS (ITU-R BS.1770-4 via ``torchaudio.functional.loudness``).

    NaN for empty or silent input (every 400 ms block below the -70 LUFS gate). A signal
    shorter than one gating block is measured looped to 400 ms (its mean power kept).
    """
    import torchaudio.functional as AF

    x = torch.as_tensor(np.asarray(x, np.float64)).reshape(-1)
    block = int(GATE_BLOCK_S * rate)
    if x.numel() == 0:
        return math.nan
    if x.numel() < block:
        x = x.repeat(math.ceil(block / x.numel()))[:block]
    return float(AF.loudness(x[None], rate))


def peak_db(x) -> float:
    """Sample peak in dBFS (-inf for silence)."""
    peak = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


@dataclass
class Matched:
    """Gains (dB) that bring each version to ``target`` LUFS; ``lowered``: ``target`` is below the one asked for."""
    target: float
    lowered: bool
    loudness: dict[str, float] = field(default_factory=dict)  # LUFS as given (NaN: not measurable)
    gain_db: dict[str, float] = field(default_factory=dict)


def match_loudness(versions: dict[str, np.ndarray], target: float = TARGET_LUFS,
                   ceiling_db: float = PEAK_CEILING_DB) -> Matched:
    """Gains that give every version the same integrated loudness without a peak above ``ceiling_db``.

    The common loudness is ``target``, or less when a version's peak would exceed the
    ceiling at ``target``: then ``min over versions of (ceiling - (peak - loudness))``, at
    which the loudest peak sits exactly at the ceiling. A version whose loudness cannot be
    measured (silence) keeps its level, lowered only to keep its peak under the ceiling.
    """
    loud = {k: integrated_loudness(v) for k, v in versions.items()}
    peaks = {k: peak_db(v) for k, v in versions.items()}
    room = [ceiling_db - (peaks[k] - loud[k]) for k in versions if math.isfinite(loud[k])]
    used = min([target, *room])
    gains = {k: used - loud[k] if math.isfinite(loud[k]) else min(0.0, ceiling_db - peaks[k]) for k in versions}
    return Matched(used, used < target, loud, gains)


def mel_image(versions: dict[str, np.ndarray], path: Path, n_mels: int = 128) -> None:
    """PNG of the versions' log-mel spectrograms side by side (2048 / hop 512, 0-24 kHz, shared dB scale)."""
    from matplotlib.figure import Figure
    from torchaudio.transforms import MelSpectrogram

    mel = MelSpectrogram(RATE, n_fft=2048, hop_length=512, n_mels=n_mels, f_max=RATE / 2, power=2.0)
    specs = {k: 10 * torch.log10(mel(torch.as_tensor(np.asarray(v, np.float32))) + 1e-10).numpy()  # (n_mels, frames)
             for k, v in versions.items()}
    top = max(float(s.max()) for s in specs.values()) if specs else 0.0
    fig = Figure(figsize=(2.9 * len(specs) + 0.9, 2.3))
    axes = fig.subplots(1, len(specs), sharey=True, squeeze=False)[0]
    hz = np.array([500, 1000, 2000, 4000, 8000, 16000])
    ticks = n_mels * np.log10(1 + hz / 700) / math.log10(1 + RATE / 2 / 700)  # HTK mel positions of those Hz
    for ax, (name, s) in zip(axes, specs.items()):
        im = ax.imshow(s, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                       extent=(0, s.shape[1] * 512 / RATE, 0, n_mels))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("s", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(ticks, [f"{h / 1000:g}k" for h in hz])
    axes[0].set_ylabel("Hz (mel scale)", fontsize=8)
    fig.colorbar(im, ax=list(axes), label="dB", pad=0.01).ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=72)


def _tag(version: str) -> str:
    return version.replace(" ", "_")


class ListeningReport:
    """Writes a listening report folder while ``evaluate`` runs (``add``), and its page at the end (``finish``).

    ``folder`` must be new, empty or an earlier report (whose audio and images are replaced);
    anything else raises ``ListeningReportError`` before any work is done. ``seed`` fixes the
    blind order (None: a random seed, kept in ``self.seed``).
    """

    def __init__(self, folder: str | Path, blind: bool = False, seed: int | None = None,
                 target_lufs: float = TARGET_LUFS, audio_format: str = "ogg"):
        if audio_format not in AUDIO_FORMATS:
            raise ListeningReportError(f"audio format {audio_format!r}: unknown; use one of {list(AUDIO_FORMATS)}")
        self.folder, self.blind, self.target = Path(folder), blind, float(target_lufs)
        self.seed = int(seed) if seed is not None else secrets.randbits(32)
        self.audio_format = audio_format
        self._rng = np.random.default_rng(self.seed)
        self.examples: list[dict] = []
        if self.folder.exists() and not self.folder.is_dir():
            raise ListeningReportError(f"--html {self.folder}: is a file; give a folder for the report")
        stray = [p.name for p in self.folder.iterdir() if p.name not in REPORT_FILES] if self.folder.is_dir() else []
        if stray:
            raise ListeningReportError(f"--html {self.folder}: holds other files ({', '.join(sorted(stray)[:3])}); "
                                       "give a new or empty folder, or an earlier report to replace")
        for sub in ("audio", "spec"):  # an earlier report's files go: its images would tell a blind page's order
            shutil.rmtree(self.folder / sub, ignore_errors=True)
        for sub in ("audio",) if blind else ("audio", "spec"):
            (self.folder / sub).mkdir(parents=True)

    def add(self, k: int, ex, outputs: dict[str, np.ndarray], rows: list[dict]) -> None:
        """Write example ``k``'s audio (and spectrogram): ``ex`` an ``Example``, ``outputs`` (T,) per checkpoint."""
        versions = {"clean": ex.clean, "degraded": ex.degraded,
                    **{f"enhanced {lab}": np.asarray(y, np.float32).reshape(-1) for lab, y in outputs.items()}}
        item = {"k": k, "name": f"{ex.file} {ex.shifter} {ex.shift}", "file": ex.file, "shifter": ex.shifter,
                "shift": ex.shift, "seconds": len(ex.clean) / RATE, "rows": rows}
        if self.blind:
            x, y = ("degraded", "enhanced A") if len(outputs) == 1 else ("enhanced A", "enhanced B")
            item["order"] = ORDERS[int(self._rng.integers(2))]
            a, b = (x, y) if item["order"] == "xy" else (y, x)
            item["x"], item["y"] = x, y
            play = {"ref": "clean", "a": a, "b": b}  # file tag -> version: the names give nothing away
        else:
            play = {_tag(v): v for v in versions}
        matched = match_loudness({v: versions[v] for v in play.values()}, self.target)
        fmt, subtype, level = AUDIO_FORMATS[self.audio_format]
        item["audio"] = {}
        for tag, version in play.items():
            rel = f"audio/{k:04d}_{tag}.{self.audio_format}"
            scaled = versions[version] * 10 ** (matched.gain_db[version] / 20)
            sf.write(self.folder / rel, scaled.astype(np.float32), RATE, format=fmt, subtype=subtype,
                     compression_level=level)
            item["audio"][tag] = {"src": rel, "version": version, "lufs": matched.loudness[version],
                                  "gain_db": matched.gain_db[version]}
        item["target"], item["lowered"] = matched.target, matched.lowered
        if not self.blind:
            item["image"] = f"spec/{k:04d}.png"
            mel_image({v: versions[v] * 10 ** (matched.gain_db[v] / 20) for v in play.values()},
                      self.folder / item["image"])
        self.examples.append(item)

    def report_id(self, report: dict) -> str:
        """12 hex digits naming this report: its seed, data, checkpoints and examples."""
        text = "|".join([str(self.seed), str(report.get("data")), *(c["path"] for c in report["checkpoints"].values()),
                         *(e["name"] for e in self.examples)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def finish(self, report: dict) -> Path:
        """Write ``index.html`` for the evaluation ``report``; adds ``report["listening"]``; returns the page's path."""
        from gan.eval.listening_page import render_blind, render_report

        rid = self.report_id(report)
        meta = {"report_id": rid, "target": self.target, "ceiling": PEAK_CEILING_DB, "format": self.audio_format}
        if self.blind:
            for e in self.examples:
                e["key"] = blind_key(rid, e["k"], e["order"])
            page = render_blind(report, self.examples, meta)
        else:
            page = render_report(report, self.examples, meta)
        path = self.folder / "index.html"
        path.write_text(page, encoding="utf-8")
        report["listening"] = {"page": str(path), "report_id": rid, "blind": self.blind, "target_lufs": self.target,
                               "examples": len(self.examples),
                               "lowered": {e["name"]: e["target"] for e in self.examples if e["lowered"]}}
        if self.blind:
            report["listening"].update(seed=self.seed, order={e["k"]: e["order"] for e in self.examples})
        return path
