"""Round trips of phase vocoders a conditioned model never trained on (librosa, Rubber Band), cleaned
while it is told "unknown" and while it is told "torchaudio" (the phase vocoder it trained on), on the
curve probe's held-out examples (16 files x 4 s, +12 and -5). Prints JSON: per shifter, shift and mode,
% change of mel / LSD / MR-STFT (model vs input, and beyond level).

    python exp/scripts/told_nearest.py runs/c6/checkpoints/step_000007000
"""
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from gan.bench.learn import score  # noqa: E402
from gan.config import load_config  # noqa: E402
from gan.eval.evaluation import shifter_examples  # noqa: E402
from gan.eval.metrics import MetricSuite  # noqa: E402
from gan.inference.loading import load_generator  # noqa: E402

torch.set_num_threads(1)
cfg = load_config("cpu")
suite = MetricSuite(["mel", "lsd", "mrstft"], cfg.loss)
g = load_generator(sys.argv[1]).model
out = {}
for shifter in ("librosa", "rubberband"):
    examples = list(shifter_examples("data/heldout", cfg.data.degrade, [shifter], [12, -5], 4.0))
    as_torchaudio = [dataclasses.replace(e, shifter="torchaudio") for e in examples]
    for mode, exs in (("unknown", examples), ("told torchaudio", as_torchaudio)):
        for tag, scores in score(g, exs, suite, {}, ("torchaudio",)).items():
            out[f"{shifter}{tag.lstrip('abcdefghijklmnopqrstuvwxyz')} {mode}"] = {
                m: {"model": v["model"], "beyond": v["beyond"]} for m, v in scores.items()}
print(json.dumps(out, indent=1))
