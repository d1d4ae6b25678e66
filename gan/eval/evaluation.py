"""Scoring checkpoints on a data set: degraded vs enhanced vs clean, and paired comparisons.

Examples come from one of four sources (all mono 48 kHz):

- a folder of clean recordings degraded on the fly by named shifters (``shifters=[...]``),
  each file by each shifter and shift (shift 0: the clean file itself, to check that
  clean input is left alone); ``shifter_matrix`` then summarises the report per
  (shifter, shift) and metric, marking the shifters outside the checkpoint's training mix;

- a folder of clean recordings, degraded on the fly by the round trip of the
  checkpoint's training config, in the cache's pieces with the cache's shifter choice per
  piece and shift (so a file scores as its cache items would);
- a folder of clean recordings plus ``degraded_dir`` holding the same file names
  degraded elsewhere;
- a preprocessing cache (a folder with ``manifest.json``): its ``split`` (default ``val``).

    report = evaluate(["runs/a", "runs/b"], "data/demo", metrics=["lsd", "mel"])
    print(format_table(report))  # gan.eval.report

With two checkpoints every example is scored by both, and ``report["compare"]`` holds a
paired test (t-test, Wilcoxon, 95% CI of the mean difference B - A) per metric. Tables,
files and plots of a report: ``gan.eval.report``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gan.data.recipe import degrade_piece, mono_model_rate, piece_bounds
from gan.dsp.audio import AudioError, find_audio_files, read_audio
from gan.eval.level import gain_match
from gan.eval.metrics import (HIGHER_IS_BETTER, MetricSuite, improvement, one_sided_p, paired_test, relative_change,
                              summarize, too_few_note)
from gan.log import get_logger
from generators.condition import FAMILIES

log = get_logger(__name__)

RATE = 48000
KINDS = ("degraded", "enhanced", "improvement", "degraded_matched", "enhanced_matched", "level", "beyond_level")


@dataclass
class Example:
    file: str
    shift: str  # "+10", or "given" for pairs degraded elsewhere
    clean: np.ndarray  # (T,) float32, 48 kHz
    degraded: np.ndarray  # (T,)
    shifter: str = "recipe"  # the shifter of the round trip ("recipe": the training config's choice per piece)


SILENT_DB = -60.0  # references whose RMS is below this (dBFS) are skipped: every distance to them is meaningless


def rms_dbfs(x) -> float:
    """RMS level of a signal in dBFS (-300 for digital silence)."""
    return 10 * math.log10(float(np.mean(np.square(np.asarray(x, np.float64)))) + 1e-30)


def usable_reference(name: str, clean: np.ndarray) -> bool:
    """False, with a one-line note, for an empty or silent reference.

    Every folder source (``--shifters``, the training recipe, ``degraded_dir``) checks each
    file once with it, before any round trip; a cache holds no silent pieces (preprocessing
    drops them).
    """
    if clean.size == 0:
        log.warning("note: %s: empty; skipped", name)
        return False
    rms_db = rms_dbfs(clean)
    if rms_db < SILENT_DB:
        log.warning("note: %s: silent (RMS %.0f dBFS < %.0f); skipped", name, rms_db, SILENT_DB)
        return False
    return True


def shifter_examples(data_dir: str | Path, degrade_cfg, shifters: list[str], shifts: list[int],
                     max_seconds: float | None = None) -> Iterator[Example]:
    """Each clean file round-tripped by each named shifter and shift (0: the file unchanged)."""
    from gan.dsp.shifters import check_shifters, round_trip

    from gan.config import DegradeConfig

    check_shifters(DegradeConfig(shifters={n: 1.0 for n in shifters}))
    root = Path(data_dir)
    for path in find_audio_files(root):
        rel = path.relative_to(root).as_posix()
        clean = _mono48(path, max_seconds)
        if not usable_reference(rel, clean):
            continue
        for shifter in shifters:
            for s in shifts:
                if s == 0 and shifter != shifters[0]:
                    continue  # the clean file is the same for every shifter
                degraded = clean.copy() if s == 0 else round_trip(clean, s, degrade_cfg, shifter)
                yield Example(rel, f"{s:+d}" if s else "0", clean, degraded, "none" if s == 0 else shifter)


def _mono48(path: Path, max_seconds: float | None) -> np.ndarray:
    x = mono_model_rate(*read_audio(path))
    return x[: int(max_seconds * RATE)] if max_seconds else x


def folder_examples(data_dir: str | Path, degrade_cfg, shifts: list[int],
                    max_seconds: float | None = None) -> Iterator[Example]:
    """Each file cut into the cache's pieces, each piece resampled and degraded as the cache does it.

    A file's clean and degraded audio are its pieces back to back, so they equal the cache's
    items for it (before the cache's per-piece gain and int16 rounding), and the round trip's
    memory is bounded by one piece whatever the file's length.
    """
    root = Path(data_dir)
    limit = int(max_seconds * RATE) if max_seconds else None
    for path in find_audio_files(root):
        rel = path.relative_to(root).as_posix()
        audio, sr = read_audio(path)  # (C, T) at the file's rate
        pieces, n = [], 0
        for start, stop in piece_bounds(audio.shape[1], sr):
            if limit is not None and n >= limit:
                break
            pieces.append(mono_model_rate(audio[:, start:stop], sr))
            n += len(pieces[-1])
        del audio
        clean = np.concatenate(pieces)[:limit]
        if not usable_reference(rel, clean):
            continue
        for s in shifts:
            degraded = np.concatenate([degrade_piece(x, rel, k, degrade_cfg, [s])[1][s] for k, x in enumerate(pieces)])
            yield Example(rel, f"{s:+d}", clean, degraded[:limit])


def pair_examples(data_dir: str | Path, degraded_dir: str | Path,
                  max_seconds: float | None = None) -> Iterator[Example]:
    root, other = Path(data_dir), Path(degraded_dir)
    for path in find_audio_files(root):
        rel = path.relative_to(root).as_posix()
        match = other / rel if (other / rel).is_file() else next(iter(sorted(other.rglob(path.name))), None)
        if match is None:
            log.warning("warning: %s: no file of that name in %s; skipped", rel, other)
            continue
        clean = _mono48(path, max_seconds)
        if not usable_reference(rel, clean):
            continue
        degraded = _mono48(match, max_seconds)
        n = min(len(clean), len(degraded))
        yield Example(rel, "given", clean[:n], degraded[:n])


def cache_examples(cache_dir: str | Path, split: str, shifts: list[int] | None,
                   max_seconds: float | None = None) -> Iterator[Example]:
    from gan.data.cache import SCALE, open_cache

    cache = open_cache(cache_dir)
    shifts = cache.shifts if shifts is None else shifts
    missing = [s for s in shifts if s not in cache.shifts]
    if missing:
        raise AudioError(f"cache {cache_dir}: has no shift {missing}; it holds {cache.shifts}")
    part = cache.split(split)
    for item, off, length, item_shifts in zip(part.items, part.offsets, part.lengths, part.shifts):
        n = min(int(length), int(max_seconds * RATE)) if max_seconds else int(length)
        name = f"{item['file']}#{item.get('piece', 0)}"
        clean = part.clean[off: off + n].astype(np.float32) / SCALE  # preprocessing dropped silent pieces
        for k, s in enumerate(item_shifts.tolist()):
            if s in shifts:
                yield Example(name, f"{s:+d}", clean, part.degraded[k][off: off + n].astype(np.float32) / SCALE,
                              item.get("shifters", {}).get(str(s), "recipe"))


def examples(data: str | Path, degrade_cfg, shifts: list[int] | None = None, degraded_dir: str | Path | None = None,
             split: str = "val", max_seconds: float | None = None,
             shifters: list[str] | None = None) -> Iterator[Example]:
    data = Path(data)
    if (data / "manifest.json").is_file():
        if shifters:
            raise AudioError(f"--data {data}: --shifters degrades clean recordings; give a folder, not a cache")
        return cache_examples(data, split, shifts, max_seconds)
    if not data.is_dir():
        raise AudioError(f"--data {data}: not a folder; give a folder of clean recordings or a cache")
    if shifters:
        return shifter_examples(data, degrade_cfg, shifters, list(shifts or [12, -12]), max_seconds)
    if degraded_dir is not None:
        return pair_examples(data, degraded_dir, max_seconds)
    return folder_examples(data, degrade_cfg, list(shifts or degrade_cfg.shifts), max_seconds)


def evaluate(checkpoints: list[str | Path], data: str | Path, shifts: list[int] | None = None,
             degraded_dir: str | Path | None = None, split: str = "val", metrics: list[str] | None = None,
             max_seconds: float | None = None, chunk_seconds: float = 5.0, device: str | None = None,
             progress: bool = True, shifters: list[str] | None = None, on_example=None, told: bool = False) -> dict:
    """Score every example's degraded input and each checkpoint's output against the clean reference.

    ``shifters``: degrade the clean folder ``data`` on the fly with these shifters and
    ``shifts`` (default ±12) instead of the checkpoint's own recipe; the report then has a
    ``matrix`` (see ``shifter_matrix``). Returns a dict: ``rows`` (one per example and
    checkpoint), ``summary`` per checkpoint, ``compare`` with two checkpoints.
    Each row also holds the *gain-matched* scores (``gan.eval.level``: input and output scaled
    by one gain per file to the reference's energy, ``input_gain`` / ``output_gain``):
    ``{m}_degraded_matched``, ``{m}_enhanced_matched``, ``{m}_level`` (what the gain alone buys:
    improvement of the gain-matched input over the input) and ``{m}_beyond_level`` (improvement of
    the gain-matched output over the gain-matched input); ``verdict_beyond_level`` tests the latter
    as ``verdict`` tests the raw improvement, and with two checkpoints ``compare_matched`` compares
    the gain-matched outputs as ``compare`` compares the outputs.
    ``on_example(k, example, outputs, rows)``, when given, is called after each example is
    scored, with its number ``k`` (from 1), the ``Example``, each checkpoint's output by label
    (``(T,)`` float32, 48 kHz) and its rows; nothing of the audio is kept here
    (``gan.eval.listening.ListeningReport.add`` writes it out).
    ``told``: a generator conditioned on its input's round trip (``generator.band_gain.condition``) is told
    each example's shifter and shift (``shifters`` or cache examples; clean input stays unknown); default: unknown.
    Raises ``AudioError`` for data that gives no examples.
    """
    from gan.inference import Enhancer, load_generator

    loaded = [load_generator(c) for c in checkpoints]
    enhancers = [Enhancer(g, chunk_seconds=chunk_seconds, device=device) for g in loaded]
    labels = [chr(ord("A") + i) for i in range(len(loaded))]
    suite = MetricSuite(metrics, loaded[0].cfg.loss)
    rows = []
    start = time.monotonic()
    for k, ex in enumerate(examples(data, loaded[0].cfg.data.degrade, shifts, degraded_dir, split, max_seconds,
                                    shifters), 1):
        if progress:
            log.info("[%d] %s %s %s (%.0f s)", k, ex.file, ex.shifter, ex.shift, time.monotonic() - start)
        name = f"{ex.file} {ex.shifter} {ex.shift}"
        deg, deg_matched, input_gain = score_with_oracle_gain(suite, ex.clean, ex.degraded, name, "input")
        outputs = {}
        for label, enh in zip(labels, enhancers):
            known = told and ex.shifter in FAMILIES and ex.shift not in ("", "0")
            est = enh.enhance(ex.degraded[None], RATE, name=name, told=(ex.shifter, int(ex.shift)) if known else None)[0]
            outputs[label] = est.numpy()
            sc, sc_matched, output_gain = score_with_oracle_gain(suite, ex.clean, outputs[label], name,
                                                                   f"output {label}")
            row = {"file": ex.file, "shifter": ex.shifter, "shift": ex.shift, "checkpoint": label,
                   "seconds": len(ex.clean) / RATE, "input_gain": input_gain, "output_gain": output_gain}
            for m in suite.names:
                row.update({f"{m}_degraded": deg[m], f"{m}_enhanced": sc[m],
                            f"{m}_improvement": improvement(m, deg[m], sc[m]),
                            f"{m}_degraded_matched": deg_matched[m], f"{m}_enhanced_matched": sc_matched[m],
                            f"{m}_level": improvement(m, deg[m], deg_matched[m]),
                            f"{m}_beyond_level": improvement(m, deg_matched[m], sc_matched[m])})
            rows.append(row)
        if on_example is not None:
            on_example(k, ex, outputs, rows[-len(labels):])
    if not rows:
        raise AudioError(f"--data {data}: no examples to evaluate")

    def verdicts(before: str, after: str) -> dict:
        return {lab: {m: verdict([r[f"{m}_{before}"] for r in rows if r["checkpoint"] == lab],
                                 [r[f"{m}_{after}"] for r in rows if r["checkpoint"] == lab], m)
                      for m in suite.names} for lab in labels}

    report = {
        "data": str(data), "metrics": suite.names, "skipped_metrics": suite.skipped,
        "verdict": verdicts("degraded", "enhanced"),
        "verdict_beyond_level": verdicts("degraded_matched", "enhanced_matched"),
        "checkpoints": {lab: {"path": str(g.path), "step": g.step, "ema": g.ema, "generator": g.cfg.generator.name}
                        for lab, g in zip(labels, loaded)},
        "summary": {lab: {f"{m}_{k}": summarize(r[f"{m}_{k}"] for r in rows if r["checkpoint"] == lab)
                          for m in suite.names for k in KINDS} for lab in labels},
        "rows": rows,
    }
    is_cache = (Path(data) / "manifest.json").is_file()
    if shifters or is_cache:  # a cache's pieces have many shifts each: one row per shifter
        report["told"] = told
        report["matrix"] = {lab: shifter_matrix(rows, lab, suite.names, loaded_mix(g), by_shift=not is_cache)
                            for lab, g in zip(labels, loaded)}
    if len(labels) == 2:
        by = {lab: {(r["file"], r["shifter"], r["shift"]): r for r in rows if r["checkpoint"] == lab} for lab in labels}
        keys = list(by["A"])
        for key, kind in (("compare", "enhanced"), ("compare_matched", "enhanced_matched")):
            report[key] = {m: paired_test([by["A"][k][f"{m}_{kind}"] for k in keys],
                                          [by["B"][k][f"{m}_{kind}"] for k in keys], HIGHER_IS_BETTER[m])
                           for m in suite.names}
    return report


def score_with_oracle_gain(suite: MetricSuite, clean: np.ndarray, x: np.ndarray, name: str,
                           what: str) -> tuple[dict, dict, float]:
    """Scores of ``x`` and of ``x`` gain-matched to ``clean`` (``gan.eval.level``), and that gain.

    ``clean``, ``x``: ``(T,)`` float32 at 48 kHz. A gain that cannot be matched (silence) is 1,
    with a one-line note naming the example ``name`` and ``what`` ``x`` is (``"input"``).
    """
    matched, gain, note = gain_match(clean, x)
    if note:
        log.warning("note: %s: %s: %s", name, what, note)
    return suite.score(clean, x, name), suite.score(clean, matched, f"{name}, gain-matched"), gain


def level_checks(enhancer, data_dir: str | Path | None = None) -> dict:
    """What a model does to silence and level, in dB: the figures "never worse" needs.

    - ``silence_out_dbfs``: RMS of the output for 2 s of digital silence (want < -60);
    - ``noise_floor_out_dbfs``: RMS of the output for 2 s of white noise at -80 dBFS RMS;
    - ``hot_peak_change_db``: peak of the output minus peak of the input for a recording
      scaled to peak at +4 dBFS (a float file above full scale; want within 0.5 dB), the first
      file of ``data_dir`` (else a 440 Hz tone with harmonics).
    """
    rng = np.random.default_rng(0)
    n = 2 * RATE
    out = {"silence_out_dbfs": rms_dbfs(enhancer.enhance(np.zeros(n, np.float32))),
           "noise_floor_out_dbfs": rms_dbfs(enhancer.enhance(
               (rng.standard_normal(n) * 10 ** (-80 / 20)).astype(np.float32)))}
    files = find_audio_files(data_dir) if data_dir is not None and Path(data_dir).is_dir() else []
    if files:
        x = _mono48(files[0], 10.0)
    else:
        t = np.arange(n) / RATE
        x = sum(np.sin(2 * np.pi * 440 * k * t) / k for k in range(1, 6)).astype(np.float32)
    x = (x * (10 ** (4 / 20) / np.abs(x).max())).astype(np.float32)  # peak +4 dBFS
    y = np.asarray(enhancer.enhance(x, name=f"level check (+4 dBFS {files[0].name if files else 'tone'})"))
    out["hot_peak_change_db"] = 20 * math.log10(float(np.abs(y).max()) / float(np.abs(x).max()))
    out["hot_source"] = files[0].name if files else "tone"
    return out


def verdict(degraded, enhanced, metric: str, alpha: float = 0.01) -> dict:
    """Did the model help on this metric? ``better`` / ``worse`` (one-sided paired Wilcoxon p < alpha) or ``no change``.

    ``n``: the pairs; ``note`` (only when so): too few finite pairs to ever reach ``p < alpha``.
    """
    p_better, p_worse = one_sided_p(degraded, enhanced, HIGHER_IS_BETTER[metric])
    word = "better" if p_better < alpha else "worse" if p_worse < alpha else "no significant change"
    out = {"verdict": word, "p_better": p_better, "p_worse": p_worse, "n": len(degraded)}
    note = too_few_note(int(np.sum(np.isfinite(degraded) & np.isfinite(enhanced))), alpha)
    return {**out, "note": note} if note else out


def loaded_mix(loaded) -> list[str]:
    """The shifters a checkpoint trained on (positive weight in its config)."""
    from gan.dsp.shifters import trained_shifters

    return trained_shifters(loaded.cfg.data.degrade)


def shifter_matrix(rows: list[dict], label: str, metrics: list[str], trained: list[str],
                   by_shift: bool = True) -> list[dict]:
    """Per (shifter, shift) and metric of one checkpoint: relative improvement of the mean and one-sided p-values.

    ``rel`` = (mean degraded - mean enhanced) / mean degraded for distances (the sign flipped
    for higher-is-better metrics): > 0 means better, 0.05 = 5 % closer to the reference.
    For clean input (shift 0) the degraded distance is 0, so ``rel`` is NaN and ``abs``
    (the mean distance of the output to its input) says how much the model changed it.
    ``by_shift=False`` pools every shift of a shifter (shift ``"all"``).

    Level-matched baselines (``gan.eval.level``), per metric: ``degraded_matched`` /
    ``enhanced_matched`` (means of the gain-matched input / output), ``level_rel`` (gain-matched
    input vs input: what the oracle gain alone buys), ``matched_rel`` (gain-matched output vs
    input), ``beyond_rel`` and ``beyond_abs`` (gain-matched output vs gain-matched input: what
    the model restores beyond level) with its one-sided p-values ``beyond_p_better`` /
    ``beyond_p_worse``. Every ``*_rel`` is signed like ``rel`` (+ = better).
    """
    out = []
    mine = [r for r in rows if r["checkpoint"] == label]
    keys = list(dict.fromkeys((r["shifter"], r["shift"] if by_shift else "all") for r in mine))
    for shifter, shift in keys:
        sel = [r for r in mine if r["shifter"] == shifter and (not by_shift or r["shift"] == shift)]
        cell = {"shifter": shifter, "shift": shift, "n": len(sel),
                "trained": shifter in trained or shifter == "recipe", "metrics": {}}
        for m in metrics:
            deg = [r[f"{m}_degraded"] for r in sel]
            enh = [r[f"{m}_enhanced"] for r in sel]
            deg_m = [r[f"{m}_degraded_matched"] for r in sel]
            enh_m = [r[f"{m}_enhanced_matched"] for r in sel]
            md, me, mdm, mem = (float(np.nanmean(v)) for v in (deg, enh, deg_m, enh_m))
            p_better, p_worse = one_sided_p(deg, enh, HIGHER_IS_BETTER[m])
            beyond_better, beyond_worse = one_sided_p(deg_m, enh_m, HIGHER_IS_BETTER[m])
            cell["metrics"][m] = {"degraded": md, "enhanced": me, "rel": relative_change(m, md, me), "abs": me - md,
                                  "p_better": p_better, "p_worse": p_worse,
                                  "degraded_matched": mdm, "enhanced_matched": mem,
                                  "level_rel": relative_change(m, md, mdm), "matched_rel": relative_change(m, md, mem),
                                  "beyond_rel": relative_change(m, mdm, mem), "beyond_abs": mem - mdm,
                                  "beyond_p_better": beyond_better, "beyond_p_worse": beyond_worse}
        out.append(cell)
    return out
