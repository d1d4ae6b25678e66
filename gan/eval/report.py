"""Reports of an evaluation (``gan.eval.evaluation.evaluate``): text tables, the shifter x metric
matrix, JSON / CSV files and plots.

    print(format_table(report)); print(format_matrix(report))
    write_outputs(report, "eval.json", "eval.csv"); plot_matrix(report, "matrix.png")
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np


def format_matrix(report: dict, alpha: float = 0.01) -> str:
    """The shifter x metric matrix of each checkpoint as text: relative improvement, and its significance."""
    lines = []
    for lab, cells in report.get("matrix", {}).items():
        info = report["checkpoints"][lab]
        metrics = report["metrics"]
        lines.append(f"checkpoint {lab}: {info['path']} (step {info['step']}): relative improvement of the mean "
                     f"distance (+ = closer to clean); '+' / '-': one-sided paired Wilcoxon p < {alpha} better / "
                     "worse; * = shifter not in its training mix")
        lines.append(f"{'shifter':<14}{'shift':>6}{'n':>4}" + "".join(f"{m:>16}" for m in metrics))
        for c in cells:
            name = c["shifter"] + ("" if c["trained"] or c["shifter"] == "none" else "*")
            row = f"{name:<14}{c['shift']:>6}{c['n']:>4}"
            for m in metrics:
                v = c["metrics"][m]
                mark = "+" if v["p_better"] < alpha else "-" if v["p_worse"] < alpha else " "
                text = f"{v['abs']:+.4f} abs" if not math.isfinite(v["rel"]) else f"{100 * v['rel']:+.1f}%"
                row += f"{text + ' ' + mark:>16}"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def plot_matrix(report: dict, path: str | Path, label: str = "A") -> None:
    """Heat map of the shifter x metric matrix of one checkpoint (colour: relative improvement, %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, metrics = [c for c in report["matrix"][label] if c["shift"] != "0"], report["metrics"]
    vals = np.array([[100 * c["metrics"][m]["rel"] for m in metrics] for c in cells])
    lim = max(1.0, float(np.nanmax(np.abs(vals)))) if vals.size else 1.0
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 2.5, 0.35 * len(cells) + 1.5))
    im = ax.imshow(vals, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    for i, c in enumerate(cells):
        for j, m in enumerate(metrics):
            v = c["metrics"][m]
            mark = "+" if v["p_better"] < 0.01 else "-" if v["p_worse"] < 0.01 else ""
            ax.text(j, i, f"{vals[i, j]:+.1f}{mark}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_yticks(range(len(cells)), [f"{c['shifter']}{'' if c['trained'] else '*'} {c['shift']}" for c in cells],
                  fontsize=7)
    fig.colorbar(im, ax=ax, label="improvement of the mean distance, %")
    info = report["checkpoints"][label]
    ax.set_title(f"{Path(info['path']).parent.parent.parent.name} step {info['step']}: * = not in the training mix",
                 fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        for m, v in report.get("verdict", {}).get(lab, {}).items():
            lines.append(f"verdict {m}: {v['verdict']} (one-sided paired Wilcoxon, n {v['n']}: p better "
                         f"{_f(v['p_better'])}, p worse {_f(v['p_worse'])})")
        lines.append("")
    if "compare" in report:
        lines.append("paired comparison of enhanced scores, B - A "
                     f"({report['checkpoints']['B']['path']} vs {report['checkpoints']['A']['path']})")
        lines.append(f"{'metric':<10}{'mean A':>11}{'mean B':>11}{'B - A':>11}{'95% CI':>25}{'t p':>11}"
                     f"{'wilcox p':>11}  better")
        for m, c in report["compare"].items():
            ci = f"[{_f(c['ci95'][0])}, {_f(c['ci95'][1])}]"
            better = {"a": "A", "b": "B"}.get(c["better"], c["better"])
            lines.append(f"{m:<10}{_f(c['mean_a']):>11}{_f(c['mean_b']):>11}{_f(c['mean_diff']):>11} {ci:>24}"
                         f"{_f(c['t_p']):>11}{_f(c['wilcoxon_p']):>11}  {better}")
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
    keys = list(dict.fromkeys((r["file"], r["shifter"], r["shift"]) for r in report["rows"]))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.25 * len(keys) * len(labels)), 2.2 * len(metrics)),
                             squeeze=False, sharex=True)
    width = 0.8 / len(labels)
    for ax, m in zip(axes[:, 0], metrics):
        for i, lab in enumerate(labels):
            vals = {(r["file"], r["shifter"], r["shift"]): r[f"{m}_improvement"] for r in report["rows"]
                    if r["checkpoint"] == lab}
            ax.bar(np.arange(len(keys)) + i * width, [vals[k] for k in keys], width, label=lab)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(f"{m} impr.")
    axes[-1, 0].set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [f"{f} {h} {s}" for f, h, s in keys], rotation=90,
                           fontsize=6)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
