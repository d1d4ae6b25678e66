"""Scoring checkpoints on a data set: degraded vs enhanced vs clean, and paired comparisons.

Examples come from one of three sources (all mono 48 kHz):

- a folder of clean recordings, degraded on the fly by the round trip of the
  checkpoint's training config, in the cache's pieces with the cache's shifter choice per
  piece and shift (so a file scores as its cache items would);
- a folder of clean recordings plus ``degraded_dir`` holding the same file names
  degraded elsewhere;
- a preprocessing cache (a folder with ``manifest.json``): its ``split`` (default ``val``).

    report = evaluate(["runs/a", "runs/b"], "data/demo", metrics=["lsd", "mel"])
    print(format_table(report))

With two checkpoints every example is scored by both, and ``report["compare"]`` holds a
paired test (t-test, Wilcoxon, 95% CI of the mean difference B - A) per metric.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gan.audio import AudioError, find_audio_files, read_audio
from gan.cache import degrade_piece, mono_model_rate, piece_bounds
from gan.metrics import HIGHER_IS_BETTER, MetricSuite, improvement, paired_test, summarize

RATE = 48000
KINDS = ("degraded", "enhanced", "improvement")


@dataclass
class Example:
    file: str
    shift: str  # "+10", or "given" for pairs degraded elsewhere
    clean: np.ndarray  # (T,) float32, 48 kHz
    degraded: np.ndarray  # (T,)


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
            print(f"warning: {rel}: no file of that name in {other}; skipped", file=sys.stderr)
            continue
        clean, degraded = _mono48(path, max_seconds), _mono48(match, max_seconds)
        n = min(len(clean), len(degraded))
        yield Example(rel, "given", clean[:n], degraded[:n])


def cache_examples(cache_dir: str | Path, split: str, shifts: list[int] | None,
                   max_seconds: float | None = None) -> Iterator[Example]:
    from gan.cache import SCALE, open_cache

    cache = open_cache(cache_dir)
    shifts = cache.shifts if shifts is None else shifts
    missing = [s for s in shifts if s not in cache.shifts]
    if missing:
        raise AudioError(f"cache {cache_dir}: has no shift {missing}; it holds {cache.shifts}")
    part = cache.split(split)
    for item, off, length, item_shifts in zip(part.items, part.offsets, part.lengths, part.shifts):
        n = min(int(length), int(max_seconds * RATE)) if max_seconds else int(length)
        name = f"{item['file']}#{item.get('piece', 0)}"
        clean = part.clean[off: off + n].astype(np.float32) / SCALE
        for k, s in enumerate(item_shifts.tolist()):
            if s in shifts:
                yield Example(name, f"{s:+d}", clean, part.degraded[k][off: off + n].astype(np.float32) / SCALE)


def examples(data: str | Path, degrade_cfg, shifts: list[int] | None = None, degraded_dir: str | Path | None = None,
             split: str = "val", max_seconds: float | None = None) -> Iterator[Example]:
    data = Path(data)
    if (data / "manifest.json").is_file():
        return cache_examples(data, split, shifts, max_seconds)
    if not data.is_dir():
        raise AudioError(f"--data {data}: not a folder; give a folder of clean recordings or a cache")
    if degraded_dir is not None:
        return pair_examples(data, degraded_dir, max_seconds)
    return folder_examples(data, degrade_cfg, list(shifts or degrade_cfg.shifts), max_seconds)


def evaluate(checkpoints: list[str | Path], data: str | Path, shifts: list[int] | None = None,
             degraded_dir: str | Path | None = None, split: str = "val", metrics: list[str] | None = None,
             max_seconds: float | None = None, chunk_seconds: float = 5.0, device: str | None = None,
             progress: bool = True) -> dict:
    """Score every example's degraded input and each checkpoint's output against the clean reference."""
    from gan.inference import Enhancer, load_generator

    loaded = [load_generator(c) for c in checkpoints]
    enhancers = [Enhancer(g, chunk_seconds=chunk_seconds, device=device) for g in loaded]
    labels = [chr(ord("A") + i) for i in range(len(loaded))]
    suite = MetricSuite(metrics, loaded[0].cfg.loss)
    rows = []
    for ex in examples(data, loaded[0].cfg.data.degrade, shifts, degraded_dir, split, max_seconds):
        if progress:
            print(f"{ex.file} {ex.shift}", file=sys.stderr, flush=True)
        deg = suite.score(ex.clean, ex.degraded)
        for label, enh in zip(labels, enhancers):
            est = enh.enhance(ex.degraded[None], RATE)[0]
            sc = suite.score(ex.clean, est)
            row = {"file": ex.file, "shift": ex.shift, "checkpoint": label, "seconds": len(ex.clean) / RATE}
            for m in suite.names:
                row.update({f"{m}_degraded": deg[m], f"{m}_enhanced": sc[m],
                            f"{m}_improvement": improvement(m, deg[m], sc[m])})
            rows.append(row)
    if not rows:
        raise AudioError(f"--data {data}: no examples to evaluate")
    report = {
        "data": str(data), "metrics": suite.names, "skipped_metrics": suite.skipped,
        "checkpoints": {lab: {"path": str(g.path), "step": g.step, "ema": g.ema, "generator": g.cfg.generator.name}
                        for lab, g in zip(labels, loaded)},
        "summary": {lab: {f"{m}_{k}": summarize(r[f"{m}_{k}"] for r in rows if r["checkpoint"] == lab)
                          for m in suite.names for k in KINDS} for lab in labels},
        "rows": rows,
    }
    if len(labels) == 2:
        by = {lab: {(r["file"], r["shift"]): r for r in rows if r["checkpoint"] == lab} for lab in labels}
        keys = list(by["A"])
        report["compare"] = {
            m: paired_test([by["A"][k][f"{m}_enhanced"] for k in keys], [by["B"][k][f"{m}_enhanced"] for k in keys],
                           HIGHER_IS_BETTER[m]) for m in suite.names}
    return report


# --------------------------------------------------------------------------- output


def _f(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.4g}"


def format_table(report: dict) -> str:
    lines = []
    for lab, info in report["checkpoints"].items():
        lines.append(f"checkpoint {lab}: {info['path']} (step {info['step']}, {info['generator']})")
        lines.append(f"{'metric':<22}{'mean':>10}{'std':>10}{'median':>10}{'min':>10}{'max':>10}{'n':>5}")
        for col, s in report["summary"][lab].items():
            lines.append(f"{col:<22}" + "".join(f"{_f(s[k]):>10}" for k in ("mean", "std", "median", "min", "max"))
                         + f"{s['n']:>5}")
        lines.append("")
    if "compare" in report:
        lines.append("paired comparison of enhanced scores, B - A "
                     f"({report['checkpoints']['B']['path']} vs {report['checkpoints']['A']['path']})")
        lines.append(f"{'metric':<10}{'mean A':>10}{'mean B':>10}{'B - A':>10}{'95% CI':>22}{'t p':>10}"
                     f"{'wilcox p':>10}  better")
        for m, c in report["compare"].items():
            ci = f"[{_f(c['ci95'][0])}, {_f(c['ci95'][1])}]"
            lines.append(f"{m:<10}{_f(c['mean_a']):>10}{_f(c['mean_b']):>10}{_f(c['mean_diff']):>10}{ci:>22}"
                         f"{_f(c['t_p']):>10}{_f(c['wilcoxon_p']):>10}  {c['better']}")
    for m, why in report["skipped_metrics"].items():
        lines.append(f"note: {m} skipped: {why}")
    return "\n".join(lines)


def _finite(obj):
    """NaN / inf -> None, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_outputs(report: dict, json_path: str | Path | None = None, csv_path: str | Path | None = None) -> None:
    """JSON of the whole report (NaN as null); CSV of per-example rows plus ``<name>_summary.csv``."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
    if csv_path:
        csv_path = Path(csv_path)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(report["rows"][0]))
            w.writeheader()
            w.writerows(report["rows"])
        with open(csv_path.with_name(csv_path.stem + "_summary.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["checkpoint", "column", "mean", "std", "median", "min", "max", "n"])
            for lab, cols in report["summary"].items():
                for col, s in cols.items():
                    w.writerow([lab, col, *(s[k] for k in ("mean", "std", "median", "min", "max", "n"))])


def plot_improvements(report: dict, path: str | Path) -> None:
    """Bar chart of the per-example improvement, one panel per metric, one bar colour per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, labels = report["metrics"], list(report["checkpoints"])
    keys = list(dict.fromkeys((r["file"], r["shift"]) for r in report["rows"]))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.25 * len(keys) * len(labels)), 2.2 * len(metrics)),
                             squeeze=False, sharex=True)
    width = 0.8 / len(labels)
    for ax, m in zip(axes[:, 0], metrics):
        for i, lab in enumerate(labels):
            vals = {(r["file"], r["shift"]): r[f"{m}_improvement"] for r in report["rows"] if r["checkpoint"] == lab}
            ax.bar(np.arange(len(keys)) + i * width, [vals[k] for k in keys], width, label=lab)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(f"{m} impr.")
    axes[-1, 0].set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [f"{f} {s}" for f, s in keys], rotation=90,
                           fontsize=6)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
