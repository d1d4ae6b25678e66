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

from gan.eval.metrics import HIGHER_IS_BETTER, relative_change, too_few_note


MATRIX_KINDS = {  # column -> (relative change, absolute change, p better, p worse) keys of a matrix cell's metric
    "": ("rel", "abs", "p_better", "p_worse"),  # the model's output vs the input
    "level": ("level_rel", None, None, None),  # the gain-matched input vs the input: what level alone buys
    "beyond": ("beyond_rel", "beyond_abs", "beyond_p_better", "beyond_p_worse"),  # gain-matched output vs input
}


def metric_kinds(metrics: list[str]) -> str:
    """Which of ``metrics`` are distances (lower is better) and which scores (higher is better), in words."""
    lower = [m for m in metrics if not HIGHER_IS_BETTER[m]]
    higher = [m for m in metrics if HIGHER_IS_BETTER[m]]
    parts = [f"{', '.join(lower)}: distances, lower is better"] if lower else []
    parts += [f"{', '.join(higher)}: scores, higher is better"] if higher else []
    return "; ".join(parts)


def matrix_caption(metrics: list[str], alpha: float = 0.01) -> str:
    """What the matrix's columns mean (shared by the text, the plot and the listening page)."""
    return (f"relative change of the mean against the input, + = better ({metric_kinds(metrics)}); per metric: the "
            "model's output vs the input; 'level': the gain-matched input (one gain per file gives it the "
            "reference's energy) vs the input, what level alone buys; 'beyond': the model's gain-matched output vs "
            "the gain-matched input, what it restores beyond level; '+' / '-': one-sided paired Wilcoxon "
            f"p < {alpha:g} better / worse; * = shifter not in the training mix; shift 0 (clean input): the absolute "
            "change")


def matrix_cell(v: dict, kind: str, alpha: float = 0.01) -> tuple[str, str]:
    """One matrix entry of metric values ``v`` (a cell's ``metrics[m]``) for column ``kind`` of ``MATRIX_KINDS``:
    (text, mark), the mark ``"+"`` / ``"-"`` / ``""`` (significantly better / worse / neither)."""
    rel, absolute, better, worse = MATRIX_KINDS[kind]
    text = change_text(v[rel], v[absolute] if absolute else v["degraded_matched"] - v["degraded"])
    mark = "" if better is None else "+" if v[better] < alpha else "-" if v[worse] < alpha else ""
    return text, mark


def matrix_columns(metrics: list[str]) -> list[tuple[str, str]]:
    """The matrix's columns: (metric, kind of ``MATRIX_KINDS``), every kind of the first metric first."""
    return [(m, kind) for m in metrics for kind in MATRIX_KINDS]


def shifter_name(cell: dict) -> str:
    """A matrix row's shifter, ``*`` marking one outside the checkpoint's training mix."""
    return cell["shifter"] + ("" if cell["trained"] or cell["shifter"] == "none" else "*")


def format_matrix(report: dict, alpha: float = 0.01) -> str:
    """The shifter x metric matrix of each checkpoint as text: relative improvement, and its significance."""
    lines = []
    for lab, cells in report.get("matrix", {}).items():
        info = report["checkpoints"][lab]
        columns = matrix_columns(report["metrics"])
        told = " -- told each round trip's shifter and shift (--told)" if report.get("told") else ""
        lines.append(f"checkpoint {lab}: {info['path']} (step {info['step']}){told}")
        lines.append(matrix_caption(report["metrics"], alpha))
        lines.append(f"{'shifter':<14}{'shift':>6}{'n':>4}" + "".join(f" {(m + ' ' + k).strip():>14}"
                                                                      for m, k in columns))
        for c in cells:
            row = f"{shifter_name(c):<14}{c['shift']:>6}{c['n']:>4}"
            for m, kind in columns:
                text, mark = matrix_cell(c["metrics"][m], kind, alpha)
                row += f" {text + ' ' + (mark or ' '):>14}"
            lines.append(row)
        note = too_few_note(min((c["n"] for c in cells), default=0), alpha)
        if note:
            lines.append(f"note: some cells: {note}")
        lines.append("")
    return "\n".join(lines)


def plot_matrix(report: dict, path: str | Path, label: str = "A") -> None:
    """Heat map of the shifter x metric matrix of one checkpoint (colour: relative improvement, %): per metric the
    model, the gain-matched input ('level') and the model beyond level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, columns = [c for c in report["matrix"][label] if c["shift"] != "0"], matrix_columns(report["metrics"])
    vals = np.array([[100 * c["metrics"][m][MATRIX_KINDS[k][0]] for m, k in columns] for c in cells])
    lim = max(1.0, float(np.nanmax(np.abs(vals)))) if vals.size else 1.0
    fig, ax = plt.subplots(figsize=(0.9 * len(columns) + 2.5, 0.35 * len(cells) + 1.8))
    im = ax.imshow(vals, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    for i, c in enumerate(cells):
        for j, (m, kind) in enumerate(columns):
            ax.text(j, i, f"{vals[i, j]:+.1f}{matrix_cell(c['metrics'][m], kind)[1]}", ha="center", va="center",
                    fontsize=7)
    ax.set_xticks(range(len(columns)), [f"{m}\n{k or 'model'}" for m, k in columns], fontsize=7)
    ax.set_yticks(range(len(cells)), [f"{shifter_name(c)} {c['shift']}" for c in cells], fontsize=7)
    fig.colorbar(im, ax=ax, label="% change of the mean (+ = better)")
    info = report["checkpoints"][label]
    ax.set_title(f"{Path(info['path']).parent.parent.parent.name} step {info['step']}: * = not in the training mix; "
                 "level: gain-matched input vs input;\nbeyond: gain-matched output vs gain-matched input; "
                 + metric_kinds(report["metrics"]), fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _cols(values, width: int) -> str:
    """Right-aligned columns, each after a space: neighbours never run together, however long a value."""
    return "".join(f" {v:>{width}}" for v in values)


def change_text(rel: float, absolute: float) -> str:
    """A relative change as ``+3.1%``; where it is undefined (from 0: clean input), the absolute one
    (``+0.0637 abs``)."""
    return f"{100 * rel:+.1f}%" if math.isfinite(rel) else f"{absolute:+.4f} abs"


LEVEL_HEAD = ["input", "gm input", "level", "output", "gm output", "beyond level"]


def level_rows(report: dict, lab: str) -> list[tuple[str, list[str], str]]:
    """Checkpoint ``lab``'s level-matched baselines per metric: (metric, cells under ``LEVEL_HEAD``, verdict of
    beyond level). Cells: the means of the input, the gain-matched input, the output and the gain-matched output;
    'level' (gm input vs input) and 'beyond level' (gm output vs gm input) as relative changes, + = better."""
    s, out = report["summary"][lab], []
    for m in report["metrics"]:
        d, dm, e, em = (s[f"{m}_{k}"]["mean"] for k in ("degraded", "degraded_matched", "enhanced", "enhanced_matched"))
        cells = [_f(d), _f(dm), change_text(relative_change(m, d, dm), dm - d), _f(e), _f(em),
                 change_text(relative_change(m, dm, em), em - dm)]
        out.append((m, cells, report["verdict_beyond_level"][lab][m]["verdict"]))
    return out


LEVEL_CAPTION = ("level-matched baselines: means; gm = gain-matched (one gain per file gives the reference's energy); "
                 "level = gm input vs input (what level alone buys); beyond level = gm output vs gm input")


def format_level(report: dict, lab: str, alpha: float = 0.01) -> list[str]:
    """Lines of checkpoint ``lab``'s level-matched baselines (``level_rows``), beyond level marked '+' / '-'."""
    lines = [f"{LEVEL_CAPTION}, '+' / '-': one-sided paired Wilcoxon p < {alpha:g} better / worse",
             f"{'metric':<10}" + _cols(LEVEL_HEAD, 12)]
    for m, cells, word in level_rows(report, lab):
        mark = {"better": " +", "worse": " -"}.get(word, "  ")
        lines.append(f"{m:<10}" + _cols([*cells[:-1], cells[-1] + mark], 12))
    return lines


def _verdict_line(m: str, v: dict, what: str = "") -> str:
    return (f"verdict {m}{what}: {v['verdict']} (one-sided paired Wilcoxon, n {v['n']}: p better "
            f"{_f(v['p_better'])}, p worse {_f(v['p_worse'])})")


def _compare_lines(title: str, compare: dict) -> list[str]:
    lines = [title, f"{'metric':<10}" + _cols(["mean A", "mean B", "B - A"], 10) + f" {'95% CI':>24}"
             + _cols(["t p", "wilcox p"], 10) + "  better"]
    for m, c in compare.items():
        ci = f"[{_f(c['ci95'][0])}, {_f(c['ci95'][1])}]"
        better = {"a": "A", "b": "B"}.get(c["better"], c["better"])
        lines.append(f"{m:<10}" + _cols([_f(c["mean_a"]), _f(c["mean_b"]), _f(c["mean_diff"])], 10) + f" {ci:>24}"
                     + _cols([_f(c["t_p"]), _f(c["wilcoxon_p"])], 10) + f"  {better}")
    return lines


def format_table(report: dict) -> str:
    lines = []
    for lab, info in report["checkpoints"].items():
        lines.append(f"checkpoint {lab}: {info['path']} (step {info['step']}, {info['generator']})")
        lines.append(f"{'metric':<24}" + _cols(["mean", "std", "median", "min", "max"], 10) + f" {'n':>5}")
        for col, s in report["summary"][lab].items():
            lines.append(f"{col:<24}" + _cols([_f(s[k]) for k in ("mean", "std", "median", "min", "max")], 10)
                         + f" {s['n']:>5}")
        verdicts = report.get("verdict", {}).get(lab, {})
        beyond = report.get("verdict_beyond_level", {}).get(lab, {})
        for m, v in verdicts.items():
            lines.append(_verdict_line(m, v))
            if m in beyond:
                lines.append(_verdict_line(m, beyond[m], " beyond level (gm output vs gm input)"))
        lines += [f"note: {n}" for n in dict.fromkeys(v["note"] for v in verdicts.values() if v.get("note"))]
        lines += format_level(report, lab)
        lines.append("")
    if "compare" in report:
        pair = f"B - A ({report['checkpoints']['B']['path']} vs {report['checkpoints']['A']['path']})"
        lines += _compare_lines(f"paired comparison of enhanced scores, {pair}", report["compare"])
        lines += _compare_lines(f"paired comparison of gain-matched enhanced scores, {pair}",
                                report["compare_matched"])
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
