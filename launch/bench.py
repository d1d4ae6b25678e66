"""Benchmarks; each prints one JSON object to stdout.

    python launch/bench.py data|models|losses|train|optim|infer|learn|curve|all [options]

Each topic lives in ``gan/bench/<topic>.py`` with ``add_args(parser)`` and
``run(args) -> dict``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOPICS = ["data", "models", "losses", "optim", "train", "infer", "learn", "curve"]


def main(argv=None) -> None:
    out = sys.stdout
    # libraries (DeepSpeed's logger among them) print to stdout; keep it for the JSON alone
    with contextlib.redirect_stdout(sys.stderr):
        result = _run(argv)
    print(json.dumps(result, indent=2), file=out)


def _run(argv) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="topic", required=True)
    modules = {}
    for topic in TOPICS:
        try:
            modules[topic] = importlib.import_module(f"gan.bench.{topic}")
        except ModuleNotFoundError as e:
            if e.name != f"gan.bench.{topic}":
                raise
            continue
        p = sub.add_parser(topic, help=(modules[topic].__doc__ or "").strip().splitlines()[0])
        modules[topic].add_args(p)
    sub.add_parser("all", help="every topic with its defaults (except learn, a training run)")
    args = parser.parse_args(argv)
    if args.topic == "all":
        result = {}
        for topic, mod in modules.items():
            if not getattr(mod, "IN_ALL", True):  # a training run of minutes: asked for by name only
                continue
            p = argparse.ArgumentParser()
            mod.add_args(p)
            result[topic] = mod.run(p.parse_args([]))
    else:
        result = modules[args.topic].run(args)
    return result


if __name__ == "__main__":
    main()
