"""Learning speed: how much a config's generator restores unseen recordings after N generator-only steps.

Trains ``--config`` (with ``--set`` overrides) for ``--steps`` generator-only steps and,
every ``--every`` steps, scores its EMA generator on clean recordings it never saw
(``--heldout``, first ``--seconds`` of each), round-tripped by each of ``--shifters``
and ``--shift``: the relative improvement of the mean mel distance, LSD and MR-STFT
distance per (shifter, shift), in % (positive = closer to the clean reference), and the
same for the level-matched baselines: ``level`` is what one oracle gain per example buys
(the input matched in energy to the reference), ``beyond`` how much closer the model's
output matched the same way is than that (restoration beyond level). The
quick probe behind the experiments table; ``launch/evaluate.py --shifters`` gives the
full matrix with significance for a finished run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

IN_ALL = False  # minutes of training: `bench.py all` leaves it out

def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="cpu", help="config name or path (default: cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--every", type=int, default=300)
    p.add_argument("--heldout", default="data/heldout", help="folder of clean recordings the run never sees")
    p.add_argument("--shifters", default="torchaudio,signalsmith,wsola,librosa,rubberband")
    p.add_argument("--shift", type=int, nargs="+", default=[12, -5, 0])
    p.add_argument("--seconds", type=float, default=4.0)


def told(ex, trained: tuple[str, ...]) -> tuple[str, float] | None:
    """``(shifter, semitones)`` of an example's round trip when its shifter is one of ``trained``, else None
    (unknown; clean input too)."""
    return (ex.shifter, float(ex.shift)) if ex.shifter in trained and ex.shift != "0" else None


def score(g: torch.nn.Module, examples: list, suite, baselines: dict, trained: tuple[str, ...] = ()) -> dict:
    """Per (shifter, shift) tag and metric: % change of the mean distance, model vs input (``model``),
    gain-matched input vs input (``level``), gain-matched output vs gain-matched input (``beyond``);
    for clean input (distance 0) also ``abs``, the mean distance of the output to it.
    ``trained``: shifters whose round trips a conditioned ``g`` is told (family and shift); others: unknown."""
    from gan.eval.level import gain_match
    from generators.condition import family_index, label_tensors

    sums: dict[tuple, list] = {}
    with torch.no_grad():
        for i, ex in enumerate(examples):
            x, known = torch.from_numpy(ex.degraded)[None, None], told(ex, trained)
            enhanced = g(x, *label_tensors(family_index(known[0]), known[1], 1)) if known else g(x)
            enhanced = enhanced[0, 0].numpy()
            if i not in baselines:  # the input's scores do not change during training
                matched = gain_match(ex.clean, ex.degraded)[0]
                baselines[i] = suite.score(ex.clean, ex.degraded), suite.score(ex.clean, matched)
            before, level = baselines[i]
            after = suite.score(ex.clean, enhanced)
            after_matched = suite.score(ex.clean, gain_match(ex.clean, enhanced)[0])
            for name in suite.names:
                sums.setdefault((f"{ex.shifter}{ex.shift}", name), []).append(
                    (before[name], after[name], level[name], after_matched[name]))
    out: dict[str, dict] = {}
    for (tag, name), rows in sums.items():
        m = np.asarray(rows).mean(axis=0)
        change = lambda ref, new: round(100 * (ref - new) / ref, 2) if ref > 0 else 0.0  # noqa: E731
        out.setdefault(tag, {})[name] = {"model": change(m[0], m[1]), "level": change(m[0], m[2]),
                                         "beyond": change(m[2], m[3])}
        if m[0] == 0:  # clean input: no relative change, the distance the model adds instead
            out[tag][name]["abs"] = round(float(m[1]), 4)
    return out


def run(args) -> dict:
    from gan.config import load_config
    from gan.data.loader import make_train_loader
    from gan.eval.evaluation import shifter_examples
    from gan.eval.metrics import MetricSuite
    from gan.train.gan_step import PRETRAIN
    from gan.train.trainer import Trainer

    cfg = load_config(args.config, [*args.overrides, f"trainer.max_steps={args.steps}"])
    examples = list(shifter_examples(args.heldout, cfg.data.degrade, args.shifters.split(","), args.shift,
                                     args.seconds))
    suite = MetricSuite(["mel", "lsd", "mrstft"], cfg.loss)  # the metrics of launch/evaluate.py
    out = {"config": args.config, "overrides": args.overrides, "heldout": args.heldout,
           "examples": len(examples), "curve": {}}
    torch.manual_seed(cfg.trainer.seed)
    with tempfile.TemporaryDirectory() as run_dir:
        tr = Trainer(cfg, run_dir, progress=False)
        batches = iter(make_train_loader(tr.cache_dir, cfg.data, 0, 1))
        start = time.perf_counter()
        baselines: dict = {}
        for i in range(args.steps):
            tr.train_step(tr.next_micro_batches(batches), stage=PRETRAIN)
            tr.step += 1
            if (i + 1) % args.every == 0 or i + 1 == args.steps:
                g = tr.generator_for_inference()
                was = g.training
                g.eval()
                out["curve"][i + 1] = score(g, examples, suite, baselines)
                print(f"step {i + 1}: " + "; ".join(  # progress on stderr (stdout keeps the JSON)
                    f"{tag} mel {v['mel']['model']:+.1f}% (beyond level {v['mel']['beyond']:+.1f}%)"
                    for tag, v in out["curve"][i + 1].items()), file=sys.stderr, flush=True)
                g.train(was)
        out["train_seconds"] = round(time.perf_counter() - start, 1)
        tr.close()
    return out
