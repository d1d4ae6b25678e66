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

**Blind mode** (``blind=True``): per example the page plays the two versions compared, X
and Y (degraded vs enhanced with one checkpoint, enhanced A vs enhanced B with two), as "A"
and "B" in the order ``blind_order(seed, example)``, with the clean reference, and asks
which is closer to it. Nothing in the folder depends on the order but the audio itself: the
page holds per example a random token (``secrets.token_hex``, not derived from anything),
the report id is random too, the audio files are named by the letters, written in letter
order and given one modification time, and MP3 (the blind default) is written at a constant
bitrate, so A and B of an example have the same size (Ogg Vorbis is variable-bitrate: its
sizes follow the content). The order of every token, the labels of X and Y and the seed go
to the key file (``gan.eval.listening_results``), outside the folder: ``<DIR>.blind-key.json``
by default. The listener downloads an answers file that the key unblinds.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch

from gan.errors import UnshiftError
from gan.eval.listening_results import KEY_FORMAT, KEY_VERSION, ORDERS, default_key_path
from gan.log import get_logger

log = get_logger(__name__)

RATE = 48000
TARGET_LUFS = -23.0  # EBU R 128 programme loudness
PEAK_CEILING_DB = -1.0  # dBFS sample peak: 1 dB of room for the lossy codec's overshoot
GATE_BLOCK_S = 0.4  # BS.1770 gating block
AUDIO_FORMATS = {  # name -> (soundfile format, subtype, compression level: 0 = best quality)
    "ogg": ("OGG", "VORBIS", 0.1),
    "mp3": ("MP3", "MPEG_LAYER_III", 0.1),  # blind: constant bitrate, 320 kbit/s
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


def blind_order(seed: int, example: int) -> str:
    """The order example ``example`` of a blind page with ``seed`` plays X and Y in: ``"xy"`` (A is X) or ``"yx"``.

    A function of the two alone (``numpy.random.default_rng([seed, example])``), however the
    examples are streamed.
    """
    return ORDERS[int(np.random.default_rng([seed, example]).integers(2))]


class ListeningReport:
    """Writes a listening report folder while ``evaluate`` runs (``add``), and its page at the end (``finish``).

    ``folder`` must be new, empty or an earlier report (whose audio and images are replaced);
    anything else raises ``ListeningReportError`` before any work is done. Blind:
    ``seed`` (>= 0) fixes the order (None: a random seed), ``key_path`` is where the key
    goes (None: ``<folder>.blind-key.json``; never inside ``folder``), ``audio_format``
    None is MP3 (Ogg Vorbis for a full report). ``token_hex(nbytes)`` draws the report id
    and the page's tokens.
    """

    def __init__(self, folder: str | Path, blind: bool = False, seed: int | None = None,
                 target_lufs: float = TARGET_LUFS, audio_format: str | None = None,
                 key_path: str | Path | None = None, token_hex: Callable[[int], str] = secrets.token_hex):
        audio_format = audio_format or ("mp3" if blind else "ogg")
        if audio_format not in AUDIO_FORMATS:
            raise ListeningReportError(f"audio format {audio_format!r}: unknown; use one of {list(AUDIO_FORMATS)}")
        self.folder, self.blind, self.target = Path(folder), blind, float(target_lufs)
        self.seed = int(seed) if seed is not None else secrets.randbits(32)
        if self.seed < 0:
            raise ListeningReportError(f"--blind-seed {self.seed}: negative; give an integer >= 0")
        self.audio_format, self.token_hex = audio_format, token_hex
        self.key_path = Path(key_path) if key_path is not None else default_key_path(self.folder)
        self.examples: list[dict] = []
        if blind and self.key_path.resolve().is_relative_to(self.folder.resolve()):
            raise ListeningReportError(f"--blind-key {self.key_path}: inside the report folder, which goes to the "
                                       "listeners; give a path outside it")
        if blind and self.key_path.is_dir():
            raise ListeningReportError(f"--blind-key {self.key_path}: is a folder; give a file path for the key")
        if blind and audio_format == "ogg":
            log.warning("note: blind page in Ogg Vorbis: file sizes follow the content, so A's and B's may differ; "
                        "--html-audio mp3 writes them at one size")
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
            item["order"] = blind_order(self.seed, k)
            a, b = (x, y) if item["order"] == "xy" else (y, x)
            item["x"], item["y"], item["token"] = x, y, self.token_hex(8)
            play = {"ref": "clean", "a": a, "b": b}  # file tag -> version, written in this order whatever the order
        else:
            play = {_tag(v): v for v in versions}
        matched = match_loudness({v: versions[v] for v in play.values()}, self.target)
        fmt, subtype, level = AUDIO_FORMATS[self.audio_format]
        constant = {"bitrate_mode": "CONSTANT"} if self.blind and fmt == "MP3" else {}  # size independent of content
        item["audio"] = {}
        for tag, version in play.items():
            rel = f"audio/{k:04d}_{tag}.{self.audio_format}"
            scaled = versions[version] * 10 ** (matched.gain_db[version] / 20)
            sf.write(self.folder / rel, scaled.astype(np.float32), RATE, format=fmt, subtype=subtype,
                     compression_level=level, **constant)
            item["audio"][tag] = {"src": rel, "version": version, "lufs": matched.loudness[version],
                                  "gain_db": matched.gain_db[version]}
        item["target"], item["lowered"] = matched.target, matched.lowered
        if not self.blind:
            item["image"] = f"spec/{k:04d}.png"
            mel_image({v: versions[v] * 10 ** (matched.gain_db[v] / 20) for v in play.values()},
                      self.folder / item["image"])
        self.examples.append(item)

    def finish(self, report: dict) -> Path:
        """Write ``index.html`` (and a blind page's key) for the evaluation ``report``; adds ``report["listening"]``.

        Returns the page's path. A blind report's key goes to ``self.key_path`` before the
        page; ``report["listening"]`` names the key's path, never the order or the seed.
        """
        from gan.eval.listening_page import describe, render_blind, render_report

        rid = self.token_hex(6)
        meta = {"report_id": rid, "target": self.target, "ceiling": PEAK_CEILING_DB, "format": self.audio_format}
        path = self.folder / "index.html"
        if self.blind:
            first = self.examples[0]
            key = {"format": KEY_FORMAT, "version": KEY_VERSION, "report_id": rid, "seed": self.seed,
                   "page": str(path.resolve()), "x": describe(first["x"], report), "y": describe(first["y"], report),
                   "examples": {e["token"]: {"example": e["k"], "name": e["name"], "order": e["order"]}
                                for e in self.examples}}
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            self.key_path.write_text(json.dumps(key, indent=1), encoding="utf-8")
            page = render_blind(report, self.examples, meta)
            now = time.time()  # one modification time: the order the files were written in shows nothing
            for f in (self.folder / "audio").iterdir():
                os.utime(f, (now, now))
        else:
            page = render_report(report, self.examples, meta)
        path.write_text(page, encoding="utf-8")
        report["listening"] = {"page": str(path), "report_id": rid, "blind": self.blind, "target_lufs": self.target,
                               "examples": len(self.examples),
                               "lowered": {e["name"]: e["target"] for e in self.examples if e["lowered"]}}
        if self.blind:
            report["listening"]["key"] = str(self.key_path)
        return path
