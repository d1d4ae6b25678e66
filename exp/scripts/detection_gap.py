"""Band gain (dB, mean over bands and frames) a checkpoint's degradation encoder applies, per shifter, on
16384-sample crops of the cache's train and validation splits and on the held-out recordings (whole 4 s
and in crops): a gap between train and validation/held-out is memorisation of the training recordings.

    python exp/scripts/detection_gap.py runs/c1_small/checkpoints/step_000002958   (from the repository root)
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from gan.config import load_config
from gan.eval.evaluation import shifter_examples
from gan.inference.loading import load_generator
from gan.data.cache import open_cache
torch.set_num_threads(1)
g = load_generator(sys.argv[1]).model.eval(); bg = g.band_gain
L = 16384
def db(x):
    with torch.inference_mode():
        return 20/np.log(10)*float(bg.log_gains(bg.stft(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None,None])).mean())
def report(name, d):
    print(name, {k: f"{np.mean(v):+.2f} (n={len(v)})" for k, v in sorted(d.items())}, flush=True)
cache = open_cache("cache/cpu")
for split in ("train", "val"):
    s = cache.split(split); d = {}; dc = {}
    for i, it in enumerate(s.items):
        o, n = s.offsets[i], s.lengths[i]
        for k, sh in enumerate(s.shifts[i]):
            name = it["shifters"][str(sh)]
            x = s.degraded[k][o:o+n] / 32767.0
            for st in range(0, n - L + 1, L * 3):
                d.setdefault(name, []).append(db(x[st:st+L]))
        c = s.clean[o:o+n] / 32767.0
        for st in range(0, n - L + 1, L * 3):
            d.setdefault("clean", []).append(db(c[st:st+L]))
    report(f"{split} crops {L}", d)
cfg = load_config("cpu")
ex = list(shifter_examples("data/heldout", cfg.data.degrade, ["torchaudio", "signalsmith", "wsola"], [12, -3, 0], 4.0))
d, dc = {}, {}
for e in ex:
    d.setdefault(e.shifter, []).append(db(e.degraded))
    for st in range(0, len(e.degraded) - L + 1, L):
        dc.setdefault(e.shifter, []).append(db(e.degraded[st:st+L]))
report("heldout whole 4s", d); report(f"heldout crops {L}", dc)
