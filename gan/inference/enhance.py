"""Cleaning whole files with a trained generator: checkpoint loading and seamless chunking.

    enhancer = Enhancer(load_generator("runs/demo"), chunk_seconds=5.0)
    enhancer.enhance_file("song.flac", "out/song.flac", shift=3)

A file streams through three stages, each processed in overlapping windows so that
the model's activations (and the resampler's) are held for one batch of windows at a
time, whatever the file length:

    read blocks ─▶ resample to 48 kHz ─▶ [pitch shift] ─▶ generator ─▶ resample back ─▶ write blocks

Every stage is a map whose output sample depends on a bounded neighbourhood of input
samples and whose structure repeats every ``align`` input samples (the generator's
total stride; the resampler's reduced input period). Windows start on multiples of
``align`` and carry ``context`` samples (>= the receptive radius) on each side; only
the central part of each window's output is kept. The first window starts at 0 and the
last ends at the end of the signal, so the borders see exactly the zero padding that a
whole-file call sees. Hence the chunked output equals the whole-file output up to
floating-point rounding (valid-padding stitching; no cross-fade is needed).

``--shift`` runs the training shifter first: the ``torchaudio`` phase vocoder streamed block
by block with its accumulated phase carried over (``gan.dsp.stream``), so memory stays
bounded there too; another shifter (``signalsmith``) gets the whole 48 kHz signal at once.

A generator conditioned on its input's round trip (``generator.band_gain.condition``) is told the
shifter and shift only when the caller says so, ``told=(shifter, semitones)``; otherwise, and for a
shifter the model never trained on, it is told "unknown" (``generators/condition.py``). The label
describes a round trip (what the model trained and was scored on); a file shifted once loses about
half that level, and a told model boosts it about 3 dB past its original level
(``exp/c6_one_way_level.json``), so ``shift`` does not tell the model the shift it applies.
"""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import torch

from gan.data.recipe import MAX_PEAK
from gan.dsp.audio import (AudioError, audio_blocks, audio_info, audio_rate, find_audio_files, read_audio,
                           resample, to_mono)
from gan.dsp.chunking import chunked_map, resample_blocks, round_up, tensor_blocks
from gan.dsp.shifters import MODEL_RATE, apply_shift, trained_shifters
from gan.dsp.stream import stream_shift
from gan.errors import first_line
from gan.inference.loading import LoadedGenerator, generator_geometry
from gan.log import get_logger
from generators.condition import MAX_SHIFT, UNKNOWN, conditioned, family_index, label_tensors
from generators.detection import CLASSES, NO_CLASSIFIER, detecting

log = get_logger(__name__)

class Enhancer:
    """Runs a generator over audio of any length, rate and channel count in overlapping windows.

    Args:
        loaded: from ``load_generator``.
        chunk_seconds: model-rate seconds kept per window (> 0; ``ValueError`` otherwise).
        context_seconds: context each side of a window; default the generator's exact receptive
            reach, which makes the chunked output equal the whole-file output.
        batch_size: windows of equal length run together.
        device: default CUDA when available.
        shifter: the shifter ``shift`` uses; default the main shifter of the training recipe.
    """

    def __init__(self, loaded: LoadedGenerator, chunk_seconds: float = 5.0, context_seconds: float | None = None,
                 batch_size: int = 4, device: str | torch.device | None = None, shifter: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = loaded.model.to(self.device)
        self.cfg = loaded.cfg
        self.align, field = generator_geometry(self.model, loaded.cfg.generator)
        self.context = field if context_seconds is None else round_up(int(context_seconds * MODEL_RATE),
                                                                        self.align)
        if chunk_seconds <= 0:
            raise ValueError(f"--chunk-seconds {chunk_seconds}: must be positive")
        self.hop = round_up(max(int(chunk_seconds * MODEL_RATE), 1), self.align)
        self.batch_size = max(1, batch_size)
        self.shifter = shifter or main_shifter(loaded.cfg.data.degrade)  # for shift != 0
        self._untrained_noted: set[str] = set()  # shifters already noted as never trained on
        if shifter is not None:
            from gan.dsp.shifters import SHIFTERS

            if shifter not in SHIFTERS:
                raise ValueError(f"--shifter {shifter}: unknown; known: {sorted(SHIFTERS)}")

    @property
    def conditioned(self) -> bool:
        """Whether the generator reads the shifter family and shift of its input (``band_gain.condition``)."""
        return conditioned(self.cfg.generator)

    def label(self, told: tuple[str, float] | None) -> tuple[int, float]:
        """``(shifter, semitones)`` or None -> the ``(family, shift)`` label the generator is given: unknown (0)
        without ``told``, for "unknown", for a model that is not conditioned, and for a shifter it never trained
        on (noted once). ValueError for a name that is no shifter, or a shift that is not finite, 0 or beyond
        +-``MAX_SHIFT`` semitones."""
        if told is None or told[0] == "unknown":
            return UNKNOWN, 0.0
        shifter, semitones = told
        index = family_index(shifter)  # a name that is no shifter at all is an error, not "unknown"
        if not (math.isfinite(semitones) and 0 < abs(semitones) <= MAX_SHIFT):
            raise ValueError(f"shift {semitones:g}: the semitones {shifter} shifted by must be finite, non-zero "
                             f"and within +-{MAX_SHIFT:g}")
        if not self.conditioned:
            return UNKNOWN, 0.0
        trained = trained_shifters(self.cfg.data.degrade)
        if shifter not in trained:
            if shifter not in self._untrained_noted:
                self._untrained_noted.add(shifter)
                log.warning("note: this model never trained on %s round trips; it is told 'unknown' (trained: %s)",
                            shifter, ", ".join(trained))
            return UNKNOWN, 0.0
        return index, float(semitones)

    @property
    def detects(self) -> bool:
        """Whether the generator has a degradation classifier (``band_gain.detect``) that ``guess`` reads."""
        return detecting(self.cfg.generator)

    @torch.inference_mode()
    def guess(self, src: str | Path, seconds: float = 30.0) -> dict[str, float] | None:
        """What the degradation classifier takes a file for: ``{class: probability}`` over
        ``generators.detection.CLASSES``, the mean over the frames of the file's first ``seconds``
        mixed to mono at 48 kHz; None for a file too short to guess (under half an encoder window,
        ``band_gain.n_fft / 2`` samples at 48 kHz). A guess from recordings like the training audio,
        not a measurement (``bench.py curve`` reports its accuracy on held-out recordings). ValueError
        for a model without a classifier; AudioError for a file that cannot be read."""
        if not self.detects:
            raise ValueError(NO_CLASSIFIER)
        rate = audio_rate(src)
        x, _ = read_audio(src, 0, math.ceil(seconds * rate))
        x = torch.from_numpy(np.ascontiguousarray(resample(to_mono(x), rate, MODEL_RATE), dtype=np.float32))
        band_gain = self.model.band_gain
        if len(x) <= band_gain.cfg.n_fft // 2:  # the centred STFT's reflection padding needs more
            return None
        logits = band_gain.classify(x.reshape(1, 1, -1).to(self.device))
        return dict(zip(CLASSES, band_gain.detection.probabilities(logits)[0].tolist()))

    @torch.inference_mode()
    def _generate(self, x: torch.Tensor, label: tuple[int, float] = (UNKNOWN, 0.0)) -> torch.Tensor:
        """``(k, C, L) -> (k, C, L)``: every channel of every window as one batch item, each told ``label``."""
        k, c, n = x.shape
        x = x.reshape(k * c, 1, n).to(self.device)
        if label[0] == UNKNOWN:
            y = self.model(x)  # (k * C, 1, L)
        else:
            y = self.model(x, *label_tensors(*label, k * c, self.device))
        return y.reshape(k, c, n).float().cpu()

    def stream(self, blocks: Iterator[torch.Tensor], channels: int, n: int,
               progress: Callable[[int], None] | None = None,
               label: tuple[int, float] = (UNKNOWN, 0.0)) -> Iterator[torch.Tensor]:
        """48 kHz ``(C, n)`` blocks in -> enhanced 48 kHz blocks out (same total length)."""
        return chunked_map(blocks, channels, n, n, functools.partial(self._generate, label=label), self.hop,
                           self.context, batch=self.batch_size, on_window=progress)

    def enhance(self, x: torch.Tensor | np.ndarray, sample_rate: int = MODEL_RATE, shift: float = 0.0,
                chunked: bool = True, name: str = "input", told: tuple[str, float] | None = None) -> torch.Tensor:
        """``(C, T)`` (or ``(T,)``) at ``sample_rate`` -> enhanced, same shape, rate and level.

        Input peaking above the training range is scaled into it and back (``level_gain``).
        ``told``: ``(shifter, semitones)``, how the input was already shifted (a conditioned model reads it).
        """
        x = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x).float()
        squeeze = x.dim() == 1
        x = x[None] if squeeze else x
        gain = level_gain(float(x.abs().max()) if x.numel() else 0.0, name)  # one note per input
        blocks = self._pipeline(tensor_blocks(x), x.shape[0], x.shape[-1], sample_rate, shift, chunked, gain=gain,
                                told=told)
        parts = list(blocks)
        y = torch.cat(parts, dim=-1)[:, : x.shape[-1]] if parts else x.clone()
        return y[0] if squeeze else y

    def _pipeline(self, blocks, channels: int, n: int, sample_rate: int, shift: float, chunked: bool,
                  progress=None, gain: float = 1.0, clean: bool = True,
                  told: tuple[str, float] | None = None) -> Iterator[torch.Tensor]:
        label = self.label(told)  # not the shift applied here: a label describes a round trip (module docstring)
        if gain != 1.0:
            blocks = (b * gain for b in blocks)
        x48, n48 = resample_blocks(blocks, channels, n, sample_rate, MODEL_RATE)
        if shift:
            shifter = self.shifter
            if shifter == "torchaudio" and n48 >= MODEL_RATE:
                x48 = stream_shift(x48, channels, n48, MODEL_RATE, shift, self.cfg.data.degrade)
            else:  # short input, or a shifter that needs the whole signal at once
                whole = torch.cat(list(x48), dim=-1) if n48 else torch.zeros(channels, 0)  # (C, n48)
                x48 = tensor_blocks(apply_shift(whole, MODEL_RATE, shift, self.cfg.data.degrade, shifter))
        if not clean:  # the shifted input alone (for A/B listening against the cleaned file)
            y48 = x48
        elif chunked:
            y48 = self.stream(x48, channels, n48, progress, label)
        else:
            whole = torch.cat(list(x48), dim=-1)
            y48 = iter([self._generate(whole[None], label)[0]]) if n48 else iter([])
        out, _ = resample_blocks(y48, channels, n48, MODEL_RATE, sample_rate)
        return out if gain == 1.0 else (y / gain for y in out)

    def enhance_file(self, src: str | Path, dst: str | Path, shift: float = 0.0, subtype: str | None = None,
                     progress: bool = True, clean: bool = True, told: tuple[str, float] | None = None) -> Path:
        """Clean one file into ``dst`` (same format and subtype as ``src`` unless given).

        ``clean=False`` writes the file only shifted by ``shift`` (the model is not run).
        ``told``: ``(shifter, semitones)``, how the file was already shifted (a conditioned model reads it).
        Raises ``AudioError`` for a file that cannot be read or written.
        """
        src, dst = Path(src), Path(dst)
        if dst.exists() and dst.resolve() == src.resolve():
            raise AudioError(f"{dst}: is the input file; choose another output folder")
        info = audio_info(src)  # decoded to its end once: the length and peak used below, never the header's
        n, channels, rate = info.frames, info.channels, info.samplerate
        subtype = subtype or info.subtype
        clip = not any(s in subtype for s in ("FLOAT", "DOUBLE"))
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.partial")
        gain = level_gain(info.peak, str(src))
        bar = _progress_bar(n * MODEL_RATE // max(rate, 1), f"{src.name}", progress)
        try:
            try:
                fout = sf.SoundFile(str(tmp), "w", rate, channels, subtype, format=info.format)
            except (sf.LibsndfileError, ValueError, TypeError) as e:
                raise AudioError(f"{dst}: cannot write {info.format}/{subtype} ({e}); pass another --subtype "
                                 "or convert the input to WAV/FLAC") from None
            with fout:
                blocks = (torch.from_numpy(b) for b in audio_blocks(src, stop=n))  # (C, <= READ_BLOCK) each
                written = 0
                try:
                    for y in self._pipeline(blocks, channels, n, rate, shift, True, bar.update, gain, clean,
                                                 told):
                        y = y[:, : n - written].numpy()
                        fout.write(np.clip(y, -1.0, 1.0).T if clip else y.T)
                        written += y.shape[-1]
                except AudioError as e:
                    msg = str(e)
                    raise AudioError(msg if str(src) in msg else f"{src}: {msg}") from None
                except (RuntimeError, ValueError) as e:  # a truncated or corrupt file, found mid-stream
                    msg = first_line(e)
                    raise AudioError(f"{src}: failed after {written} of {n} samples ({msg})") from None
            tmp.replace(dst)
        finally:
            bar.close()
            tmp.unlink(missing_ok=True)
        return dst


def level_gain(peak: float, name: str) -> float:
    """Gain for a signal peaking at ``peak``: 1 up to full scale; above it (a float file), the gain that
    brings the peak to 0.99, the top of the training range.

    A hotter input is scaled down before the model and back up after it, so the output
    keeps the input's level; a one-line note says so.
    """
    if not math.isfinite(peak) or peak <= 1.0:
        return 1.0
    gain = MAX_PEAK / peak
    log.warning("note: %s: peaks at %+.1f dBFS; scaled by %.1f dB into the model's range and back, so the output "
                "keeps its level", name, 20 * math.log10(peak), 20 * math.log10(gain))
    return gain


def main_shifter(cfg_degrade) -> str:
    """The shifter the training data used most; ties go to ``torchaudio`` (streamed), then by name."""
    return min(cfg_degrade.shifters, key=lambda name: (-cfg_degrade.shifters[name], name != "torchaudio", name))


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="smp", unit_scale=True, disable=not enabled, file=sys.stderr,
                leave=False)


def output_paths(inputs: list[str | Path], out_dir: str | Path) -> list[tuple[Path, Path]]:
    """Files and folders -> (input file, output file) pairs; folders keep their relative layout.

    Raises ``AudioError`` for a missing input, an output that would overwrite an input or
    take two inputs, and an output folder inside an input folder (its results would become
    input of the next run, one level deeper each time).
    """
    out_dir = Path(out_dir)
    pairs = []
    for item in map(Path, inputs):
        if item.is_dir():
            inside = out_dir.resolve() == item.resolve() or item.resolve() in out_dir.resolve().parents
            if inside:
                raise AudioError(f"-o {out_dir}: lies inside the input folder {item} (it would write "
                                 f"{out_dir / item.name}/..., read as input next time); choose an output folder "
                                 "outside it")
            pairs += [(f, out_dir / item.name / f.relative_to(item)) for f in find_audio_files(item)]
        elif item.is_file():
            pairs.append((item, out_dir / item.name))
        else:
            raise AudioError(f"{item}: no such file or folder")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst.resolve() == src.resolve():
            raise AudioError(f"{dst}: would overwrite the input; choose another output folder (-o)")
        if dst.resolve() in seen:
            raise AudioError(f"{dst}: both {seen[dst.resolve()]} and {src} would be written there; "
                             "enhance them into separate output folders")
        seen[dst.resolve()] = src
    return pairs
