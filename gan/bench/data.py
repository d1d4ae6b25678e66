"""Data pipeline speed: preprocessing (audio seconds per wall second) and loader batches/s.

    python launch/bench.py data [--seconds 30] [--loader-workers 0,2]

Preprocesses about ``--seconds`` of the bundled recordings into a temporary cache with the
default degradation (6 shifts, all cores), then times the training loader at
``--batch-size`` x ``--segment-length`` for each worker count.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import soundfile as sf

from gan.config import DataConfig, DegradeConfig
from gan.data.loader import make_train_loader
from gan.data.preprocess import build_cache, default_workers
from gan.dsp.audio import find_audio_files

ROOT = Path(__file__).resolve().parents[2]


def add_args(parser) -> None:
    parser.add_argument("--audio-dir", default=str(ROOT / "data" / "demo"), help="recordings to preprocess")
    parser.add_argument("--seconds", type=float, default=30.0, help="preprocess about this much audio")
    parser.add_argument("--workers", type=int, default=None,
                        help="preprocessing workers (default: one per core, at most one per 2 GB of available memory)")
    parser.add_argument("--shifts", default="-12,-11,-10,10,11,12", help="comma-separated semitone shifts")
    parser.add_argument("--shifter", default="torchaudio", help="shifter used for every pair")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--segment-length", type=int, default=49152)
    parser.add_argument("--loader-workers", default="0,2", help="comma-separated worker counts to time")
    parser.add_argument("--loader-seconds", type=float, default=3.0, help="timing window per worker count")


def _subset(audio_dir: Path, seconds: float, into: Path) -> float:
    """Link files (sorted) into ``into`` until ``seconds`` of audio -> total seconds linked."""
    total = 0.0
    into.mkdir()
    for i, p in enumerate(find_audio_files(audio_dir)):
        if total >= seconds:
            break
        total += sf.info(str(p)).duration
        (into / f"{i:04d}_{p.name}").symlink_to(p.resolve())
    return total


def _loader_rate(cfg: DataConfig, seconds: float) -> float:
    it = iter(make_train_loader(cfg.cache_dir, cfg, 0, 1))
    next(it)  # worker start-up is not throughput
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    rate = n / (time.perf_counter() - t0)
    it.close()
    return rate


def run(args) -> dict:
    shifts = [int(s) for s in args.shifts.split(",")]
    with tempfile.TemporaryDirectory(prefix="unshift-bench-") as tmp:
        audio = Path(tmp) / "audio"
        audio_seconds = _subset(Path(args.audio_dir), args.seconds, audio)
        cfg = DataConfig(audio_dir=str(audio), cache_dir=str(Path(tmp) / "cache"), val_fraction=0.0,
                         batch_size=args.batch_size, segment_length=args.segment_length,
                         degrade=DegradeConfig(shifts=shifts, shifters={args.shifter: 1.0}))
        t0 = time.perf_counter()
        workers = default_workers() if args.workers is None else args.workers
        manifest = build_cache(cfg, progress=False, num_workers=workers, warn=lambda msg: None)
        wall = time.perf_counter() - t0
        rates = {}
        for w in (int(x) for x in args.loader_workers.split(",")):
            cfg.num_workers = w
            rates[str(w)] = round(_loader_rate(cfg, args.loader_seconds), 1)
    return {
        "preprocess_realtime_factor": round(audio_seconds / wall, 3),
        "preprocess": {"audio_seconds": round(audio_seconds, 1), "wall_seconds": round(wall, 1),
                       "cached_seconds": round(manifest["seconds"]["train"], 1), "shifts": shifts,
                       "shifter": args.shifter, "workers": workers},
        "loader_batches_per_s": rates,
        "loader": {"batch_size": args.batch_size, "segment_length": args.segment_length,
                   "window_seconds": args.loader_seconds},
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
