"""Preprocess a run's audio folder into its (clean, degraded) cache.

    python launch/preprocess.py --config demo
    python launch/preprocess.py --config gan_dac.yaml --set data.audio_dir=/data/songs --workers 8

Reads data.audio_dir, writes data.cache_dir; does nothing when an up-to-date cache is
there (--rebuild forces a new one). train.py calls the same code when the cache is
missing or stale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gan.config import load_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="config name in configs/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. data.audio_dir=/data/songs (repeatable)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if the cache is up to date")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per core, at most one per 2 GB of available memory: a "
                        "worker takes up to about 1.8 GB on long files; 0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from gan.data.cache import open_cache, split_sizes
    from gan.data.preprocess import cache_status, ensure_cache

    cfg = load_config(args.config, args.overrides)
    status = cache_status(cfg.data)
    path = ensure_cache(cfg.data, rebuild=args.rebuild, progress=not args.quiet, num_workers=args.workers)
    if status == "ok" and not args.rebuild:
        print(f"cache {path}: up to date: {split_sizes(open_cache(path).manifest)} (use --rebuild to rebuild it)",
              file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Exit code: 0 done, 1 finished badly (a diverged run, failed files), 2 a user error (one line on stderr)."""
    from gan.errors import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
