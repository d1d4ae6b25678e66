"""Train a pitch-shift restoration GAN.

    accelerate launch launch/train.py --config gan_dac.yaml
    accelerate launch --multi_gpu --num_processes 2 launch/train.py --config demo
    python launch/train.py --config demo --set trainer.max_steps=10 --resume auto

A bare config name is looked up in configs/; --set overrides any field
(validated like the file); --resume auto continues from the run's latest checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gan.audio import AudioError  # noqa: E402
from gan.checkpoint import CheckpointError  # noqa: E402
from gan.config import ConfigError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config name in configs/ or a YAML path")
    p.add_argument("--run-dir", help="run directory (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. trainer.max_steps=10 (repeatable)")
    p.add_argument("--resume", help="'auto' (latest checkpoint of the run dir, if any) or a checkpoint path")
    args = p.parse_args(argv)

    from gan.trainer import NonFiniteError, run_from_args

    try:
        trainer = run_from_args(args.config, args.run_dir, args.overrides, args.resume)
    except (ConfigError, CheckpointError, AudioError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    except (NonFiniteError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
