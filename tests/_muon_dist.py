"""Multi-process Muon check, launched by tests/test_muon.py (and importable for the 1-process reference).

    accelerate launch --multi_gpu --num_processes 2 tests/_muon_dist.py --out result.pt

Trains a small weight-normed conv net with ``build_optimizer(name="muon")`` under
DDP over gloo: once uninterrupted, once saved at step 2 and resumed in fresh
objects. Rank 0 writes both final state dicts and cross-rank checks to ``--out``.
"""
from __future__ import annotations

import argparse
import gc
import io
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import weight_norm as old_weight_norm
from torch.nn.utils.parametrizations import weight_norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gan.optim.muon  # noqa: E402
from gan.config import OptimizerConfig  # noqa: E402
from gan.optim.params import build_optimizer  # noqa: E402

STEPS = 5
RESUME_AT = 2
BATCH = 4
CFG = OptimizerConfig(name="muon", muon_lr=0.02, lr=1e-3, weight_decay=0.01, muon_weight_decay=0.01)


class Net(nn.Module):
    """``(B, 1, T) -> (B, 1, 2T)``: both weight-norm APIs, three same-shape matrices, a transposed conv, an unused matrix."""

    def __init__(self):
        super().__init__()
        self.inp = weight_norm(nn.Conv1d(1, 8, 7, padding=3))
        self.alpha = nn.Parameter(torch.ones(1, 8, 1))
        self.blocks = nn.ModuleList([old_weight_norm(nn.Conv1d(8, 8, 3, padding=1)) for _ in range(3)])
        self.wide = weight_norm(nn.Conv1d(8, 16, 5, padding=2))
        self.up = old_weight_norm(nn.ConvTranspose1d(16, 8, 4, stride=2, padding=1))
        self.lin = nn.Linear(8, 8)
        self.unused = nn.Parameter(torch.randn(8, 8))
        self.out = weight_norm(nn.Conv1d(8, 1, 3, padding=1))

    def forward(self, x):
        x = self.inp(x)  # (B, 8, T)
        x = x + torch.sin(self.alpha * x) ** 2 / (self.alpha + 1e-9)
        for b in self.blocks:
            x = x + torch.tanh(b(x))
        x = self.up(torch.tanh(self.wide(x)))  # (B, 16, T) -> (B, 8, 2T)
        x = self.lin(x.mT).mT
        return self.out(x)  # (B, 1, 2T)


def build_model() -> Net:
    torch.manual_seed(0)
    return Net()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(BATCH, 1, 32, generator=g), torch.randn(BATCH, 1, 64, generator=g)


def _state_bytes(opt) -> bytes:
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    return buf.getvalue()


def train(steps: int, resume_at: int | None = None, ckpt: Path | None = None, accelerator=None) -> dict:
    """Train ``steps`` steps (1 process without ``accelerator``); returns the final model state dict."""
    return _state(run(steps, resume_at, ckpt, accelerator)[0], accelerator)


def _state(model, accelerator) -> dict:
    raw = accelerator.unwrap_model(model) if accelerator else model
    return {k: v.detach().clone() for k, v in raw.state_dict().items()}


def run(steps: int, resume_at: int | None = None, ckpt: Path | None = None, accelerator=None) -> tuple:
    """The training loop; returns ``(model, optimizer)``, prepared when ``accelerator`` is given."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)

    def make():
        model = build_model()
        opt = build_optimizer(model, CFG)
        opt.chunk_numel = 300  # several all-gathers in flight per step, as with a large model
        opt.batch_ns = True  # the GPU path: one Newton-Schulz call per shape bucket
        return accelerator.prepare(model, opt) if accelerator else (model, opt)

    model, opt = make()
    for step in range(steps):
        if step == resume_at:
            if rank == 0:
                raw = accelerator.unwrap_model(model) if accelerator else model
                torch.save({"model": raw.state_dict(), "opt": opt.state_dict()}, ckpt)
            if accelerator:
                accelerator.wait_for_everyone()
            model, opt = make()
            state = torch.load(ckpt, weights_only=True)
            (accelerator.unwrap_model(model) if accelerator else model).load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
        x, y = batch(step)
        n = BATCH // world
        x, y = x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]
        loss = F.mse_loss(model(x), y)
        accelerator.backward(loss) if accelerator else loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, opt


def main() -> None:
    import torch.distributed as dist
    from accelerate import Accelerator, DistributedDataParallelKwargs

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])

    flops = [0.0]
    ns = gan.optim.muon.newton_schulz

    def counting_ns(X, steps=5, dtype=None, eps=1e-7):
        m, n = sorted(X.shape[-2:])
        flops[0] += (X.shape[0] if X.ndim == 3 else 1) * gan.optim.muon.ns_flops(m, n, steps)
        return ns(X, steps, dtype, eps)

    gan.optim.muon.newton_schulz = counting_ns
    model, opt = run(STEPS, accelerator=acc)
    gan.optim.muon.newton_schulz = ns
    full = _state(model, acc)
    resumed = train(STEPS, RESUME_AT, args.out.with_suffix(".ckpt"), accelerator=acc)

    inner, raw = opt.optimizer, acc.unwrap_model(model)
    has_state = {id(p) for p in inner.state}
    # complete: every trained parameter has its state on this rank; the unused one has none
    complete = all((id(p) in has_state) != (p is raw.unused) for p in raw.parameters())
    gathered = [None] * acc.num_processes
    params = torch.cat([v.reshape(-1) for v in full.values()])
    dist.all_gather_object(gathered, (params, _state_bytes(inner), complete, flops[0]))
    if acc.is_main_process:
        torch.save(
            {
                "world": acc.num_processes,
                "uninterrupted": full,
                "resumed": resumed,
                "params_equal_across_ranks": all(torch.equal(g[0], gathered[0][0]) for g in gathered),
                "state_equal_across_ranks": all(g[1] == gathered[0][1] for g in gathered),
                "state_complete": all(g[2] for g in gathered),
                "ns_flops": [g[3] for g in gathered],
            },
            args.out,
        )
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
    gc.collect()  # DDP's reducer lets go of the process group while the interpreter is whole (launch/train.py)
