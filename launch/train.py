"""Train a pitch-shift restoration GAN.

    accelerate launch launch/train.py --config gan_dac.yaml --set data.audio_dir=/music
    accelerate launch --multi_gpu --num_processes 2 launch/train.py --config demo --run-dir runs/demo2
    python launch/train.py --config demo --set trainer.max_steps=10 --run-dir runs/try
    python launch/train.py --config demo --run-dir runs/try --resume auto --set trainer.max_steps=20
    python launch/train.py --config cpu --run-dir runs/tuned --init-from runs/demo   # fine-tune

A bare config name is looked up in configs/; --set overrides any field
(validated like the file); --resume auto continues from the run's latest checkpoint with
the run's own settings; --init-from starts a new run from another run's weights.
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config name in configs/ or a YAML path")
    p.add_argument("--run-dir", help="run directory (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. trainer.max_steps=10 (repeatable)")
    p.add_argument("--resume", help="'auto' (latest checkpoint of the run dir, if any) or a checkpoint path")
    p.add_argument("--init-from", metavar="RUN_OR_STEP", help="fine-tune: start a new run from another run's "
                                                               "weights (fresh optimizer and schedule)")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from gan.train.run import run_from_args

    trainer = run_from_args(args.config, args.run_dir, args.overrides, args.resume, args.init_from)
    try:
        trainer.train()
    finally:
        trainer.close()
        # the process group's last holders (DDP's reducer) go now, while the interpreter is whole: left to
        # interpreter shutdown, gloo's worker threads can end after Python and abort the process (SIGABRT)
        del trainer
        gc.collect()
    return 0


def main(argv=None) -> int:
    """Exit code: 0 done, 1 finished badly (a diverged run, failed files), 2 a user error (one line on stderr)."""
    from gan.errors import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
