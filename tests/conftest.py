import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO_AUDIO = ROOT / "data" / "demo"

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # trainers in tests take one thread (trainer.threads: 0 = this)
torch.set_num_threads(1)  # tiny models: threads only add contention on small CI machines
