"""Optimizer cost: Muon vs AdamW on a config's generator, batched vs per-matrix Newton-Schulz, NS work per rank.

    python launch/bench.py optim [--config gan_dac] [--batch 1] [--segment 16384] [--width-div 4]

Times (best of ``--reps``): a full generator training step (forward, L1 loss,
backward, optimizer) with Muon and with AdamW; the optimizer step alone;
Newton-Schulz on every Muon matrix of the generator batched by shape vs one
call per matrix; and the Newton-Schulz work per rank in a real 2-process run
(torchrun; gloo on CPU) vs one process: ``ns_work_per_rank_2proc_vs_1proc`` is
the largest rank's share of the Newton-Schulz FLOPs it actually ran (counted
per call), ``ns_time_per_rank_2proc_vs_1proc`` the same in seconds (only
meaningful when the two ranks have their own cores or GPUs). On CPU the
defaults use a small batch and the generator's channel widths divided by
``--width-div``, so the run takes about a minute; the JSON says which. FLOP
counts at the config's full size are reported beside the timings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gan.optim.muon
from gan.config import OptimizerConfig, load_config
from gan.optim.muon import matrix_shape, newton_schulz, ns_flops
from gan.optim.params import build_optimizer, split_params

ROOT = Path(__file__).resolve().parents[2]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="gan_dac", help="run config whose generator is measured")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, the config's batch_size on GPU")
    p.add_argument("--segment", type=int, default=None, help="samples; default: 16384 on CPU, the config's on GPU")
    p.add_argument("--width-div", type=int, default=None, help="divide channel widths; default: 4 on CPU, 1 on GPU")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process (the machine may be shared)")
    p.add_argument("--no-dist", action="store_true", help="skip the 2-process Newton-Schulz measurement")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal: 2-process worker output


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_times(fns: dict, device: torch.device, reps: int, warmup: int = 1) -> dict[str, float]:
    """Fastest of ``reps`` timed calls of each function, taking turns so that all see the same load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {k: math.inf for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def _scaled(gcfg, div: int):
    """The generator config with channel widths divided by ``div`` (fields channels, max_channels, widths)."""
    if div == 1:
        return gcfg
    fields = {f.name for f in dataclasses.fields(gcfg)}
    changes = {f: max(1, getattr(gcfg, f) // div) for f in ("channels", "max_channels") if f in fields}
    if "widths" in fields:
        changes["widths"] = [max(1, w // div) for w in gcfg.widths]
    return dataclasses.replace(gcfg, **changes)


def _setup(args) -> dict:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    on_gpu = device.type == "cuda"
    div = args.width_div or (1 if on_gpu else 4)
    batch = args.batch or (cfg.data.batch_size if on_gpu else 1)
    segment = args.segment or (cfg.data.segment_length if on_gpu else 16384)
    return dict(device=device, cfg=cfg, div=div, batch=batch, segment=segment)


def _build(setup: dict):
    from generators import build_generator

    torch.manual_seed(0)
    return build_generator(_scaled(setup["cfg"].generator, setup["div"])).to(setup["device"])


class _NSMeter:
    """Wraps ``gan.optim.muon.newton_schulz`` to add up the time and FLOPs of every call."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.flops, self._orig = device, 0.0, 0.0, gan.optim.muon.newton_schulz

    def __enter__(self):
        def timed(X, steps=5, dtype=None, eps=1e-7):
            _sync(self.device)
            t = time.perf_counter()
            out = self._orig(X, steps, dtype, eps)
            _sync(self.device)
            self.seconds += time.perf_counter() - t
            m, n = sorted(X.shape[-2:])
            self.flops += (X.shape[0] if X.ndim == 3 else 1) * ns_flops(m, n, steps)
            return out

        gan.optim.muon.newton_schulz = timed
        return self

    def __exit__(self, *exc):
        gan.optim.muon.newton_schulz = self._orig


def _muon_with_grads(model, device):
    opt = build_optimizer(model, OptimizerConfig(name="muon"))
    g = torch.Generator(device="cpu").manual_seed(1)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(device)
    return opt


def _ns_per_step(model, device, reps: int) -> tuple[float, float, float]:
    """(NS seconds, NS FLOPs, whole step seconds) of one Muon step of ``model`` in this process, best of ``reps``."""
    opt = _muon_with_grads(model, device)
    opt.step()  # warmup (plan, buffers)
    ns, steps = [], []
    for _ in range(reps):
        with _NSMeter(device) as meter:
            steps.append(_best_times({"step": opt.step}, device, 1, warmup=0)["step"])
        ns.append(meter.seconds)
    return min(ns), meter.flops, min(steps)


# --------------------------------------------------------------------------- measurements


def _full_steps(model, setup, reps) -> dict:
    device = setup["device"]
    x = torch.randn(setup["batch"], 1, setup["segment"], device=device)
    y = torch.randn_like(x)
    opts = {name: build_optimizer(model, OptimizerConfig(name=name)) for name in ("adamw", "muon")}

    def full_step(opt):
        opt.zero_grad(set_to_none=True)
        F.l1_loss(model(x), y).backward()
        opt.step()

    full = _best_times({k: (lambda o=o: full_step(o)) for k, o in opts.items()}, device, reps)
    alone = _best_times({k: o.step for k, o in opts.items()}, device, reps)  # grads of the last backward
    return {**{f"full_step_s_{k}": v for k, v in full.items()}, **{f"opt_step_s_{k}": v for k, v in alone.items()}}


def _batched_vs_loop(model, device, reps) -> dict:
    muon, _ = split_params(model)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mats = [torch.randn(matrix_shape(p.shape), device=device, dtype=dtype) for p in muon]
    groups: dict = {}
    for m in mats:  # canonical (m <= n) orientation, as Muon batches them
        m = m.mT if m.shape[0] > m.shape[1] else m
        groups.setdefault(tuple(m.shape), []).append(m)
    stacks = [torch.stack(v) for v in groups.values()]
    t = _best_times(
        {"batched": lambda: [newton_schulz(s, 5) for s in stacks], "loop": lambda: [newton_schulz(m, 5) for m in mats]},
        device, reps,
    )
    return {"ns_batched_s": t["batched"], "ns_loop_s": t["loop"], "ns_shape_groups": len(stacks), "ns_matrices": len(mats)}


def _full_size_flops(setup) -> dict:
    """NS FLOPs of the full-size generator (plan shares for 2 ranks) and its fwd+bwd FLOPs at the config's batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from generators import build_generator

    cfg = setup["cfg"]
    with torch.device("meta"):
        full = build_generator(cfg.generator)
    shapes = [matrix_shape(p.shape) for p in split_params(full)[0]]
    ns = sum(ns_flops(min(s), max(s), 5) for s in shapes)
    _, _, work = gan.optim.muon.build_plan(shapes, 2)
    seg = 4 * cfg.generator.total_stride
    with FlopCounterMode(display=False) as fc:
        full(torch.empty(1, 1, seg, device="meta"))
    fwd_bwd = 3.0 * fc.get_total_flops() * cfg.data.batch_size * cfg.data.segment_length / seg  # backward ~ 2x forward
    return {
        "full_size_ns_gflop_per_step": ns / 1e9,
        "full_size_fwd_bwd_gflop_per_step": fwd_bwd / 1e9,
        "full_size_ns_vs_fwd_bwd_flops": ns / fwd_bwd,
        "full_size_ns_flop_share_per_rank_2proc": max(work) / sum(work),
        "full_size_conditions": f"batch {cfg.data.batch_size} x {cfg.data.segment_length} samples per process",
    }


def _two_process(args, setup) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "gan.bench.optim", "--config", args.config, "--device", setup["device"].type,
            "--width-div", str(setup["div"]), "--reps", str(args.reps), "--threads", str(args.threads),
            "--worker", str(out),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"bench optim: the 2-process run failed:\n{proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def _worker(args) -> None:
    """One rank of the 2-process measurement (launched by torchrun)."""
    import torch.distributed as dist

    multi_gpu = args.device == "cuda" and torch.cuda.device_count() >= 2
    dist.init_process_group("nccl" if multi_gpu else "gloo")
    rank = dist.get_rank()
    if multi_gpu:
        torch.cuda.set_device(rank)
    args.device = "cuda" if multi_gpu else "cpu"
    setup = _setup(args)
    model = _build(setup)
    seconds, flops, step = _ns_per_step(model, setup["device"], args.reps)
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, {"ns_s": seconds, "ns_flops": flops, "step_s": step})
    if rank == 0:
        args.worker.write_text(json.dumps(ranks))
    dist.destroy_process_group()


def run(args) -> dict:
    setup = _setup(args)
    device, reps = setup["device"], args.reps
    model = _build(setup)
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} thread)",
        "generator": f"{args.config} {setup['cfg'].generator.name}"
        + (f", channel widths / {setup['div']}" if setup["div"] > 1 else ""),
        "generator_params_m": n_params / 1e6,
        "batch": f"{setup['batch']} x {setup['segment']} samples",
    }
    result.update(_full_steps(model, setup, reps))
    result["muon_vs_adamw_step_ratio"] = result["full_step_s_muon"] / result["full_step_s_adamw"]
    result["muon_vs_adamw_opt_step_ratio"] = result["opt_step_s_muon"] / result["opt_step_s_adamw"]
    result.update(_batched_vs_loop(model, device, reps))
    result["batched_vs_loop_speedup"] = result["ns_loop_s"] / result["ns_batched_s"]
    ns1, flops1, _ = _ns_per_step(model, device, reps)
    result["ns_s_1proc"] = ns1
    if not args.no_dist:
        ranks = _two_process(args, setup)
        result["ns_s_2proc_per_rank"] = [r["ns_s"] for r in ranks]
        result["ns_flop_share_2proc_per_rank"] = [r["ns_flops"] / flops1 for r in ranks]
        result["ns_work_per_rank_2proc_vs_1proc"] = max(result["ns_flop_share_2proc_per_rank"])
        result["ns_time_per_rank_2proc_vs_1proc"] = max(r["ns_s"] for r in ranks) / ns1
        result["opt_step_s_2proc_per_rank"] = [r["step_s"] for r in ranks]
    result.update(_full_size_flops(setup))
    return result


if __name__ == "__main__":  # torchrun worker: python -m gan.bench.optim --worker OUT ...
    parser = argparse.ArgumentParser()
    add_args(parser)
    ns = parser.parse_args()
    if ns.worker is None:
        print(json.dumps(run(ns), indent=2))
    else:
        _worker(ns)
