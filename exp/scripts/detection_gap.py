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
from gan.bench.curve import mean_gain_db  # noqa: E402
from gan.config import load_config  # noqa: E402
from gan.data.cache import SCALE, open_cache  # noqa: E402
from gan.eval.evaluation import shifter_examples  # noqa: E402
from gan.inference.loading import load_generator  # noqa: E402

CROP = 16384  # samples: the CPU recipe's training crop

torch.set_num_threads(1)
band_gain = load_generator(sys.argv[1]).model.eval().band_gain


def report(name: str, gains: dict) -> None:
    print(name, {k: f"{np.mean(v):+.2f} (n={len(v)})" for k, v in sorted(gains.items())}, flush=True)


def add_crops(gains: dict, name: str, x: np.ndarray, every: int) -> None:
    for start in range(0, len(x) - CROP + 1, every):
        gains.setdefault(name, []).append(mean_gain_db(band_gain, x[start:start + CROP]))


cache = open_cache("cache/cpu")
for split_name in ("train", "val"):
    split, gains = cache.split(split_name), {}
    for i in range(len(split)):
        o, n = split.offsets[i], split.lengths[i]
        for k in range(cache.variants):
            add_crops(gains, split.shifters[i, k], split.degraded[k][o:o + n] / SCALE, 3 * CROP)
        add_crops(gains, "clean", split.clean[o:o + n] / SCALE, 3 * CROP)
    report(f"{split_name} crops {CROP}", gains)
examples = shifter_examples("data/heldout", load_config("cpu").data.degrade, ["torchaudio", "signalsmith", "wsola"],
                            [12, -3, 0], 4.0)
whole, crops = {}, {}
for ex in examples:
    whole.setdefault(ex.shifter, []).append(mean_gain_db(band_gain, ex.degraded))
    add_crops(crops, ex.shifter, ex.degraded, CROP)
report("heldout whole 4s", whole)
report(f"heldout crops {CROP}", crops)
