"""Training: the loop (``trainer``), one GAN step (``gan_step``), backends (``backend``, ``ds``), checkpoints
(``checkpointer``, ``checkpoint``), validation (``validator``), run logging (``runlog``), starting a run (``run``),
one training per run directory (``lock``) and stopping on a signal (``stopping``)."""
import os

import torch

if not torch.cuda.is_available():  # DeepSpeed's accelerator detection would warn on every CPU run
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
