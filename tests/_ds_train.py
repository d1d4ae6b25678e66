"""``launch/train.py`` for the multi-process DeepSpeed tests (tests/test_deepspeed.py).

    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 2 \
        tests/_ds_train.py --config c.yaml --run-dir runs/x

Runs the real entry point (``launch.train.main``), with two test-only differences: DeepSpeed's CPU
shared-memory all-reduce kernel is not JIT-compiled (minutes on 2 cores; gloo does the
same reductions), and after training every rank writes the weights it holds to
``<run-dir>/rank<R>.pt`` so the test can compare ranks.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (deepspeed.comm.torch is torch)

from gan.train.trainer import Trainer  # noqa: E402
from launch.train import main  # noqa: E402

_close = Trainer.close


def close_after_dumping_weights(self: Trainer) -> None:
    acc = self.accelerator
    weights = {"G": acc.unwrap_model(self.G).state_dict(), "D": acc.unwrap_model(self.D).state_dict(),
               "world": acc.num_processes, "engines": self.backend.name == "deepspeed", "step": self.step}
    torch.save(weights, self.run_dir / f"rank{acc.process_index}.pt")
    _close(self)


Trainer.close = close_after_dumping_weights

if __name__ == "__main__":
    sys.exit(main())
