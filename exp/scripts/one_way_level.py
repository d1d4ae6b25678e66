"""Level of files shifted once (no clean reference exists for them): the original, the shifted file, and
the shifted file cleaned blind and told (`enhance --shift` tells the model), in dB relative to the
original's RMS, per shift, mean over the first 5 s of each held-out file. A pitch shift should keep the
level, so 0 dB is the target and the shifted column is the loss to restore.

    python exp/scripts/one_way_level.py runs/c6/checkpoints/step_000007345
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gan.dsp.audio import find_audio_files, read_audio  # noqa: E402
from gan.dsp.shifters import apply_shift  # noqa: E402
from gan.data.recipe import mono_model_rate  # noqa: E402
from gan.inference import Enhancer, load_generator  # noqa: E402

torch.set_num_threads(1)
loaded = load_generator(sys.argv[1])
enh = Enhancer(loaded, device="cpu")
db = lambda y, x: 20 * np.log10(np.sqrt(np.mean(y ** 2)) / np.sqrt(np.mean(x ** 2)))  # noqa: E731
out = {}
for shift in (3, 5, 12, -5):
    rows = []
    for path in find_audio_files(Path("data/heldout")):
        x = mono_model_rate(*read_audio(path))[: 5 * 48000]
        if np.sqrt(np.mean(x ** 2)) < 1e-3:
            continue
        shifted = apply_shift(torch.from_numpy(x)[None], 48000, shift, loaded.cfg.data.degrade, "torchaudio")[0].numpy()
        blind = enh.enhance(shifted, told=None).numpy()
        told = enh.enhance(shifted, told=("torchaudio", shift)).numpy()
        rows.append((db(shifted, x), db(blind, x), db(told, x)))
    m = np.mean(rows, axis=0)
    a = np.mean(np.abs(rows), axis=0)
    out[f"{shift:+d}"] = {"files": len(rows), "shifted_db": round(float(m[0]), 2), "blind_db": round(float(m[1]), 2),
                          "told_db": round(float(m[2]), 2), "mean_abs_db": [round(float(v), 2) for v in a]}
    print(f"{shift:+3d}", out[f"{shift:+d}"], flush=True)
print(json.dumps(out))
