"""Quality against compute: held-out improvement of every checkpoint of one or more runs.

Scores each checkpoint (``checkpoints/step_*`` of each ``--runs`` directory) on clean recordings
it never saw (``--heldout``, first ``--seconds`` of each), round-tripped by each of ``--shifters``
at each ``--shift`` (0: the clean file): the % change of the mean mel distance, LSD and MR-STFT
distance, raw (``model``: output vs input) and beyond level (``beyond``: the output gain-matched vs
the input gain-matched), with the checkpoint's step and wall-clock training time. For a generator
with band gains, ``detection`` says how well its degradation encoder tells round trips that lost
level from those that kept it: the mean band gain it applies per shifter (dB) and the AUC of that
gain separating the phase vocoders' round trips from WSOLA's, Signalsmith's and clean input; with a
degradation classifier (``band_gain.detect``), what it names per shifter (``classifier_report``). ``--plot`` draws
one panel per metric: improvement against training minutes, one line per run and shifter group.

    python launch/bench.py curve --runs runs/cpu runs/cpu_wide --plot exp/curve.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

IN_ALL = False  # needs trained runs

LEVEL_LOSING = ("torchaudio", "librosa", "rubberband")  # phase vocoders: the round trip loses level


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, help="run directories whose checkpoints to score")
    p.add_argument("--heldout", default="data/heldout", help="folder of clean recordings the runs never saw")
    p.add_argument("--shifters", default="torchaudio,signalsmith,wsola,librosa,rubberband")
    p.add_argument("--shift", type=int, nargs="+", default=[12, -5, 0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--plot", help="PNG of improvement against training minutes")
    p.add_argument("--told", action="store_true", help="tell a model trained with generator.band_gain.condition "
                                                       "the shifter and shift of each round trip it trained on")


def run(args) -> dict:
    import torch

    from gan.bench.learn import score
    from gan.config import load_config
    from gan.dsp.shifters import trained_shifters
    from gan.eval.evaluation import shifter_examples
    from gan.eval.metrics import MetricSuite
    from gan.inference.loading import load_generator
    from gan.train.checkpoint import CheckpointError, CheckpointManager

    cfg = load_config("cpu")  # the degradation recipe of the round trips (shifter settings) and metric settings
    examples = list(shifter_examples(args.heldout, cfg.data.degrade, args.shifters.split(","), args.shift,
                                     args.seconds))
    suite = MetricSuite(["mel", "lsd", "mrstft"], cfg.loss)
    baselines: dict = {}
    out = {"heldout": args.heldout, "examples": len(examples), "told": args.told, "runs": {}}
    for run_dir in args.runs:
        files = CheckpointManager(run_dir)
        steps = files.steps() if files.dir.is_dir() else []
        if not steps:
            raise CheckpointError(f"--runs {run_dir}: no checkpoints/step_* folder; pass run directories of "
                                  "trained runs")
        points = []
        for step in steps:
            loaded = load_generator(files.final_dir(step))
            with torch.inference_mode():
                trained = tuple(trained_shifters(loaded.cfg.data.degrade)) if args.told else ()
                scores = score(loaded.model, examples, suite, baselines, trained)
            point = {"step": loaded.step, "train_seconds": loaded.train_seconds, "scores": scores}
            if getattr(loaded.model, "band_gain", None) is not None:
                point["detection"] = detection(loaded.model.band_gain, examples, trained)
            points.append(point)
        out["runs"][run_dir] = {"params": loaded.model.num_params(), "points": points}
    if args.plot:
        plot(out, args.plot)
        out["plot"] = args.plot
    return out


def detection(band_gain, examples: list, trained: tuple[str, ...] = ()) -> dict:
    """Mean applied band gain (dB, over bands and frames) per shifter, and the AUC (Mann-Whitney) of that
    gain separating level-losing round trips (``LEVEL_LOSING``) from the rest (1 = always higher);
    a conditioned encoder is told the round trips of ``trained`` shifters (see ``score``)."""
    from scipy.stats import mannwhitneyu

    from gan.bench.learn import told

    gains: dict[str, list[float]] = {}
    probabilities: dict[str, list[np.ndarray]] = {}
    for ex in examples:
        gains.setdefault(ex.shifter, []).append(mean_gain_db(band_gain, ex.degraded, told(ex, trained)))
        if band_gain.detection is not None:  # what the classifier takes it for
            probabilities.setdefault(ex.shifter, []).append(classified(band_gain, ex.degraded))

    def auc(score: dict[str, list[float]]) -> float | None:
        losing = [g for name, v in score.items() if name in LEVEL_LOSING for g in v]
        kept = [g for name, v in score.items() if name not in LEVEL_LOSING for g in v]
        return float(mannwhitneyu(losing, kept).statistic) / (len(losing) * len(kept)) if losing and kept else None

    out = {"auc": auc(gains), "mean_gain_db": {name: round(float(np.mean(v)), 2) for name, v in gains.items()}}
    if probabilities:
        out["classifier"] = classifier_report(probabilities, auc)
    return out


def classifier_report(probabilities: dict[str, list], auc) -> dict:
    """What a degradation classifier (``band_gain.detect``) says per shifter of the examples ("none": clean
    input): the share of examples whose most probable class is the true one, the mean probability of
    each class, and the AUC of the summed probability of the level-losing classes separating the
    phase vocoders' round trips from the rest (as the gain's AUC). ``probabilities``: shifter ->
    ``(L,)`` tensors in ``generators.detection.CLASSES`` order; ``auc``: ``{shifter: [score]} -> AUC``."""
    from generators.detection import CLASSES

    truth = {name: CLASSES.index(name) for name in CLASSES[1:]} | {"none": 0}
    losing = [CLASSES.index(name) for name in LEVEL_LOSING]
    p = {name: np.stack([t.numpy() for t in v]) for name, v in probabilities.items()}  # (n, L) per shifter
    return {
        "accuracy": {name: round(float(np.mean(v.argmax(1) == truth[name])), 3) for name, v in p.items()},
        "mean_probability": {name: dict(zip(CLASSES, np.round(v.mean(0), 3).tolist())) for name, v in p.items()},
        "auc_level_losing": auc({name: v[:, losing].sum(1).tolist() for name, v in p.items()}),
    }


def mean_gain_db(band_gain, x: np.ndarray, told: tuple[str, float] | None = None) -> float:
    """The band gain (dB, mean over bands and frames) ``band_gain`` applies to the signal ``x`` ``(T,)`` float32;
    ``told``: ``(shifter, semitones)`` a conditioned encoder is given (default unknown)."""
    import torch

    from generators.condition import family_index, label_tensors

    labels = label_tensors(family_index(told[0]), told[1], 1) if told else ()
    with torch.inference_mode():
        spec = band_gain.stft(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None])
        return 20 / np.log(10) * float(band_gain.log_gains(spec, *labels).mean())


def classified(band_gain, x: np.ndarray) -> "torch.Tensor":
    """The degradation classifier's class probabilities ``(L,)`` for the signal ``x`` ``(T,)`` float32."""
    import torch

    with torch.inference_mode():
        logits = band_gain.classify(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None])
        return band_gain.detection.probabilities(logits)[0]


def _group(scores: dict, metric: str, kind: str, names) -> float:
    """Mean % over the (shifter, shift) tags of ``names``."""
    vals = [v[metric][kind] for tag, v in scores.items() if tag.rstrip("+-0123456789") in names]
    return float(np.mean(vals)) if vals else float("nan")


def plot(result: dict, path: str):
    """One panel per metric: mean improvement over the phase vocoders (raw and beyond level) and over
    the round trips that keep the level (WSOLA, Signalsmith), against training minutes, three lines per
    run; saved as a PNG at ``path``. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric in zip(axes, ("mel", "lsd", "mrstft")):
        for i, (run_dir, run) in enumerate(result["runs"].items()):
            color = f"C{i % 10}"  # matplotlib's ten-colour cycle: every run is drawn
            pts = [p for p in run["points"] if p["train_seconds"]]
            minutes = [p["train_seconds"] / 60 for p in pts]
            label = f"{Path(run_dir).name} ({run['params'] / 1e6:.2f} M)"
            for kind, names, style, what in (("model", LEVEL_LOSING, "-o", "phase vocoders"),
                                              ("beyond", LEVEL_LOSING, "--s", "phase vocoders, beyond level"),
                                              ("model", ("wsola", "signalsmith"), ":^", "level kept")):
                ax.plot(minutes, [_group(p["scores"], metric, kind, names) for p in pts], style, color=color,
                        label=f"{label}: {what}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{metric}: % closer to clean (held-out)")
        ax.set_xlabel("training minutes (2-core CPU)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig
