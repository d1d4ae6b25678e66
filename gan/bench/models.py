"""Model sizes and forward+backward times; our discriminators against DAC's.

    python launch/bench.py models [--configs gan_dac gan_wavunet] [--reps 2] [--g-batch 1]

Reports, per shipped config, the generator's parameters, receptive field and forward
GFLOP per second of 48 kHz audio, and forward+backward seconds of G and D (median of
``--reps`` timed runs after one warm-up) for the full configs and the tiny test configs.
``d_vs_dac_time_ratio`` is our MPD + MRSTFT forward+backward time divided by DAC's
``Discriminator`` (same periods and windows, same weights, same input; < 1 = ours
faster), timed alternately so both see the same machine load.
"""
from __future__ import annotations

import importlib.util
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from discriminators import MultiDiscriminator, build_discriminator, load_dac_weights
from gan.config import load_config
from generators import build_generator

SAMPLE_RATE = 48000


def add_args(parser) -> None:
    parser.add_argument("--configs", nargs="+", default=["gan_dac", "gan_wavunet"], help="full-size run configs")
    parser.add_argument("--length", type=int, default=16384, help="samples per example")
    parser.add_argument("--batch", type=int, default=4, help="batch of the tiny models and of D")
    parser.add_argument("--g-batch", type=int, default=1, help="batch of the full-size generators (slow on CPU)")
    parser.add_argument("--reps", type=int, default=2, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default; 1 is steadiest on a shared machine)")
    parser.add_argument("--no-dac", action="store_true", help="skip the comparison with DAC's discriminator")


def _g_loss(y: torch.Tensor) -> torch.Tensor:
    return y.pow(2).mean()


def _d_loss(out) -> torch.Tensor:
    return sum(logits.pow(2).mean() + sum(f.abs().mean() for f in fmaps) for logits, fmaps in out)


def _dac_loss(out) -> torch.Tensor:  # DAC: a list of feature-map lists, logits last
    return sum(fm[-1].pow(2).mean() + sum(f.abs().mean() for f in fm[:-1]) for fm in out)


def _fwd_bwd(model: nn.Module, x: torch.Tensor, loss: Callable) -> float:
    start = time.perf_counter()
    loss(model(x)).backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def _timed(model: nn.Module, x: torch.Tensor, loss: Callable, reps: int) -> float:
    """Median forward+backward seconds of ``reps`` runs after one warm-up."""
    _fwd_bwd(model, x, loss)
    return statistics.median(_fwd_bwd(model, x, loss) for _ in range(reps))


def _gflop_per_audio_second(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9 / (x.numel() / SAMPLE_RATE)


class _DacFamily(nn.Module):
    """DAC's preprocessing + a subset of its sub-discriminators (to time MPD and MRD apart)."""

    def __init__(self, dac_disc: nn.Module, kind: type):
        super().__init__()
        self.preprocess = dac_disc.preprocess
        self.subs = nn.ModuleList(d for d in dac_disc.discriminators if isinstance(d, kind))

    def forward(self, x):
        x = self.preprocess(x)
        return [d(x) for d in self.subs]


def _dac_comparison(ours: MultiDiscriminator, cfgs: list, x: torch.Tensor, reps: int) -> dict:
    """Alternating fwd+bwd timings of each of our families and DAC's matching modules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DAC's deprecated weight_norm
        from dac.model.discriminator import MPD, MRD, Discriminator

        periods = next(c.periods for c in cfgs if c.name == "mpd")
        windows = next(c.window_lengths for c in cfgs if c.name == "mrd")
        ref = Discriminator(periods=periods, fft_sizes=windows, sample_rate=SAMPLE_RATE)
    load_dac_weights(ours, ref)
    pairs = {}
    for fam, cfg in zip(ours.families, cfgs):
        kind = {"mpd": MPD, "mrd": MRD}[cfg.name]
        pairs[cfg.name] = (fam, _DacFamily(ref, kind))
    warm = x[:1, :, : x.shape[-1] // 4]
    for fam, dac_fam in pairs.values():  # lazy inits (scipy, jit, allocator) out of the timings
        _fwd_bwd(fam, warm, _d_loss)
        _fwd_bwd(dac_fam, warm, _dac_loss)
    times = {name: {"ours": [], "dac": []} for name in pairs}
    for rep in range(reps):  # no full-size warm-up: these are the slowest runs of the bench
        for name, (fam, dac_fam) in pairs.items():
            runs = [("ours", fam, _d_loss), ("dac", dac_fam, _dac_loss)]
            for who, model, loss in runs if rep % 2 else runs[::-1]:
                times[name][who].append(_fwd_bwd(model, x, loss))
    by_family = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    ours_s = sum(f["ours"] for f in by_family.values())
    dac_s = sum(f["dac"] for f in by_family.values())
    for f in by_family.values():
        f["ratio"] = round(f["ours"] / f["dac"], 3)
    return {"ours_s": ours_s, "dac_s": dac_s, "ratio": ours_s / dac_s, "by_family": by_family}


def _tiny_configs():
    """tests/tiny_configs.py, loaded by path (an installed package may own the name ``tests``)."""
    path = Path(__file__).resolve().parents[2] / "tests" / "tiny_configs.py"
    spec = importlib.util.spec_from_file_location("tiny_configs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny_configs = _tiny_configs()
    torch.manual_seed(0)
    x = 0.1 * torch.randn(args.batch, 1, args.length)
    xg = x[: args.g_batch]
    out: dict = {
        "conditions": {
            "device": "cpu", "torch_threads": torch.get_num_threads(), "reps": args.reps,
            "g_full_input": [args.g_batch, 1, args.length], "d_and_tiny_input": [args.batch, 1, args.length],
            "timing": "median seconds of forward+backward after one warm-up; D on an input without grad "
                      "(the D step); measured on whatever load the machine has",
        },
        "generator_params": {}, "generator_receptive_field": {}, "generator_gflop_per_audio_second": {},
        "discriminator_params": {}, "g_fwd_bwd_s": {}, "d_fwd_bwd_s": {},
    }
    d_sections: dict[str, list] = {}  # config name -> its discriminators section
    for name in args.configs:
        cfg = load_config(name)
        g = build_generator(cfg.generator)
        out["generator_params"][name] = g.num_params()
        rf = g.receptive_field()
        out["generator_receptive_field"][name] = {"samples": rf, "seconds": round(rf / SAMPLE_RATE, 3)}
        out["generator_gflop_per_audio_second"][name] = round(_gflop_per_audio_second(g, xg), 1)
        out["g_fwd_bwd_s"][name] = _timed(g, xg, _g_loss, args.reps)
        d_sections[name] = cfg.discriminators
        del g
    tiny = {"tiny_dac_unet": tiny_configs.tiny_dac_unet(), "tiny_wavunet": tiny_configs.tiny_wavunet()}
    for name, gcfg in tiny.items():
        g = build_generator(gcfg)
        out["generator_params"][name] = g.num_params()
        out["g_fwd_bwd_s"][name] = _timed(g, x, _g_loss, args.reps)
    d_tiny = build_discriminator(tiny_configs.tiny_discriminators())
    out["discriminator_params"]["tiny"] = sum(p.numel() for p in d_tiny.parameters())
    out["d_fwd_bwd_s"]["tiny"] = _timed(d_tiny, x, _d_loss, args.reps)

    measured: list[tuple[list, int, float]] = []  # (section, params, seconds): configs often share D
    for name, section in d_sections.items():
        hit = next((m for m in measured if m[0] == section), None)
        if hit is None:
            d = build_discriminator(section)
            params = sum(p.numel() for p in d.parameters())
            if not args.no_dac and "d_vs_dac" not in out and sorted(c.name for c in section) == ["mpd", "mrd"]:
                cmp = _dac_comparison(d, section, x, args.reps)
                out["d_vs_dac_time_ratio"] = round(cmp["ratio"], 3)
                out["d_vs_dac"] = {"config": name, "ours_s": cmp["ours_s"], "dac_s": cmp["dac_s"],
                                   "by_family": cmp["by_family"]}
                seconds = cmp["ours_s"]
            else:
                seconds = _timed(d, x, _d_loss, args.reps)
            hit = (section, params, seconds)
            measured.append(hit)
        out["discriminator_params"][name], out["d_fwd_bwd_s"][name] = hit[1], hit[2]
    return out
