"""Held-out scores of a checkpoint (torchaudio, Signalsmith, WSOLA at +12 / -3 and clean input; 16 files x 4 s)
with parts of the generator switched off: ``full``, ``bg_only`` (the band gains alone), ``no_bg`` (without
them). Per tag and metric: [% change model vs input, % beyond level, mean distance added to clean input].

    python exp/scripts/ablate.py runs/c1_small/checkpoints/step_000002958 full bg_only no_bg
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from gan.bench.learn import score
from gan.config import load_config
from gan.eval.evaluation import shifter_examples
from gan.eval.metrics import MetricSuite
from gan.inference.loading import load_generator
torch.set_num_threads(1)
ckpt = sys.argv[1]
cfg = load_config("cpu")
ex = list(shifter_examples("data/heldout", cfg.data.degrade, ["torchaudio", "signalsmith", "wsola"], [12, -3, 0], 4.0))
suite = MetricSuite(["mel", "lsd", "mrstft"], cfg.loss)
g = load_generator(ckpt).model.eval()
bg = g.band_gain
class BGOnly(torch.nn.Module):
    def forward(self, x): return bg(x)
def variant(name):
    if name == "full": return g
    if name == "bg_only": return BGOnly()
    if name == "no_bg":
        g.band_gain = None; return g
base = {}
for name in sys.argv[2:]:
    g.band_gain = bg
    m = variant(name)
    with torch.inference_mode():
        s = score(m, ex, suite, base)
    print(name, json.dumps({t: {k: (v["model"], v["beyond"], v.get("abs")) for k, v in d.items()} for t, d in s.items()}), flush=True)
