"""Enhancement speed: real-time factor of chunked vs whole-file generator inference.

    python launch/bench.py infer [--configs demo,gan_dac] [--seconds 3] [--chunk-seconds 1.5]

For every generator config (randomly initialised; speed does not depend on the weights):
``rtf_chunked`` and ``rtf_whole`` = wall-clock seconds per second of 48 kHz mono audio
(lower is faster; < 1 is faster than real time), through ``gan.inference.enhance.Enhancer``.
Chunked windows carry the generator's full receptive field as context on each side, so
short chunks cost extra compute; the overhead factor is reported.
"""
from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import torch

from gan.config import ConfigError, load_config


def add_args(parser) -> None:
    parser.add_argument("--configs", default="demo,gan_dac", help="comma list of configs (names or paths)")
    parser.add_argument("--seconds", type=float, default=3.0, help="audio length per measurement")
    parser.add_argument("--chunk-seconds", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")


def _generator_sections(names: list[str]) -> dict:
    """config name -> (generator section, data section); tiny test configs when a name is missing."""
    out = {}
    for name in names:
        try:
            cfg = load_config(name)
            out[name] = (cfg.generator, cfg.data)
        except ConfigError as e:
            out[f"{name} (missing: tiny dac_unet)"] = (_tiny(), None)
            print(f"note: {e}", file=sys.stderr)
    return out


def _tiny():
    from generators import DacUNetConfig

    return DacUNetConfig(channels=4, strides=[2, 4], patch_size=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args) -> dict:
    from gan.config import DataConfig
    from gan.inference import Enhancer, LoadedGenerator
    from generators import build_generator

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = int(args.seconds * 48000)
    x = torch.randn(1, n, generator=torch.Generator().manual_seed(0)) * 0.1
    result = {"device": str(device), "threads": torch.get_num_threads(), "seconds": args.seconds,
              "chunk_seconds": args.chunk_seconds, "batch_size": args.batch_size, "configs": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for name, (gen_cfg, data_cfg) in _generator_sections(args.configs.split(",")).items():
        torch.manual_seed(0)
        model = build_generator(gen_cfg)
        cfg = SimpleNamespace(generator=gen_cfg, data=data_cfg or DataConfig(audio_dir="-", cache_dir="-"))
        enh = Enhancer(LoadedGenerator(model, cfg, 0, False, None), chunk_seconds=args.chunk_seconds,
                       batch_size=args.batch_size, device=device)
        enh.enhance(x[:, : n // 8])  # warm-up: thread pools, allocator, kernel selection
        times = {}
        for mode in ("whole", "chunked"):
            _sync(device)
            t0 = time.perf_counter()
            enh.enhance(x, chunked=mode == "chunked")
            _sync(device)
            times[mode] = time.perf_counter() - t0
        windows = -(-n // enh.hop)
        work = sum(min(n, (k + 1) * enh.hop + enh.context) - max(0, k * enh.hop - enh.context) for k in range(windows))
        result["configs"][name] = {
            "generator": gen_cfg.name, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "receptive_field": int(model.receptive_field()), "context_seconds": enh.context / 48000,
            "rtf_whole": times["whole"] / args.seconds, "rtf_chunked": times["chunked"] / args.seconds,
            "chunk_overhead": work / n, "windows": windows,
        }
    return result
