"""Training throughput: steps/s and samples/s of warmup and adversarial steps, time split, peak memory.

``--before KEY=VALUE`` (repeatable) measures the config with those overrides too, first, in the
same process, and reports ``speedup`` (after / before steps/s per stage): a change's effect under
the same machine load, e.g. ``--config cpu --before trainer.compile_activations=false``.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="demo", help="config name or path (default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=5, help="timed steps per stage")
    p.add_argument("--untimed", type=int, default=1, help="steps per stage before timing starts")
    p.add_argument("--before", action="append", default=[], metavar="KEY=VALUE",
                   help="also measure the config with these overrides, first, and report the speedup")


def run(args) -> dict:
    if not args.before:
        return measure(args, args.overrides)
    before = measure(args, [*args.overrides, *args.before])
    after = measure(args, args.overrides)
    return {"before": before, "after": after,
            "speedup": {s: after["steps_per_s"][s] / before["steps_per_s"][s] for s in after["steps_per_s"]}}


def measure(args, overrides: list[str]) -> dict:
    from gan.config import load_config
    from gan.data.loader import make_train_loader
    from gan.train.gan_step import ADVERSARIAL, PRETRAIN
    from gan.train.trainer import Trainer, peak_memory_mb

    cfg = load_config(args.config, overrides)
    out = {"config": args.config, "overrides": overrides, "batch_size": cfg.data.batch_size,
           "segment_length": cfg.data.segment_length, "grad_accum": cfg.trainer.grad_accum,
           "mixed_precision": cfg.trainer.mixed_precision}
    with tempfile.TemporaryDirectory() as run_dir:
        tr = Trainer(cfg, run_dir, progress=False)
        acc = tr.accelerator
        out["device"] = str(acc.device) if acc.device.type == "cpu" else torch.cuda.get_device_name(acc.device)
        out["num_processes"] = acc.num_processes
        batches = iter(make_train_loader(tr.cache_dir, cfg.data, acc.process_index, acc.num_processes))
        dev = acc.device
        for stage in (PRETRAIN, ADVERSARIAL):
            for i in range(args.untimed + args.steps):
                if i == args.untimed:
                    tr.timers.clear()
                    start = time.perf_counter()
                tr.train_step(tr.next_micro_batches(batches), stage=stage)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            steps_per_s = args.steps / elapsed
            out[stage] = {
                "steps_per_s": steps_per_s,
                "samples_per_s": steps_per_s * tr.samples_per_step,
                "time_split_s_per_step": {k: v / args.steps for k, v in sorted(tr.timers.items())},
            }
        out["peak_memory_mb"] = peak_memory_mb(dev)
        tr.close()
    out["steps_per_s"] = {s: out[s]["steps_per_s"] for s in (PRETRAIN, ADVERSARIAL)}
    out["samples_per_s"] = {s: out[s]["samples_per_s"] for s in (PRETRAIN, ADVERSARIAL)}
    return out
