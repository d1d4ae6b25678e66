"""Muon for hidden weight matrices and AdamW for everything else, in one optimizer.

Muon update of a weight ``W`` (any ndim >= 2, viewed as the matrix ``(rows, cols)``)::

    buf  = lerp(buf, grad, 1 - momentum)                 # momentum, every rank
    u    = lerp(grad, buf, momentum) if nesterov else buf
    O    = newton_schulz(u.view(rows, cols))             # ~ U V^T of u's SVD
    W   *= 1 - lr * weight_decay                         # decoupled decay
    W   -= lr * scale * O

``rows, cols`` is ``(out, in * k)`` for a conv weight ``(out, in, k...)`` and
``(out * k, in)`` for a transposed conv ``(in, out, k...)`` (group flag
``conv_transpose``; the matrix is the same up to a transpose, only the scale
depends on it). ``scale`` is ``sqrt(max(1, rows / cols))`` ("spectral") or
``0.2 * sqrt(max(rows, cols))`` ("match_adamw": update RMS close to AdamW's).

Distributed (``torch.distributed`` initialised, world size > 1): gradients are
already averaged (DDP), so every rank updates every momentum buffer and holds
complete, identical state. Newton-Schulz, the expensive part, is sharded: the
matrices are grouped by shape, each rank orthogonalises its share of every
group in one batched call (on GPUs; shares balanced by FLOPs), and the results are
all-gathered in chunks, asynchronously, while the next chunk and the AdamW
update are computed. Every rank then applies every update. The sharding plan
depends only on the parameter shapes, so all ranks run the same collectives
whether or not a gradient is present; a parameter with no gradient is left
untouched (under DDP a gradient exists on all ranks or on none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

NS_COEFFS = (3.4445, -4.7750, 2.0315)
SCALES = ("spectral", "match_adamw")

_all_gather = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)


def newton_schulz(G: Tensor, steps: int = 5, dtype: Optional[torch.dtype] = None, eps: float = 1e-7) -> Tensor:
    """Orthogonalise a batch of matrices: ``(B, m, n) -> (B, m, n)`` (or ``(m, n) -> (m, n)``).

    Quintic iteration with coefficients ``NS_COEFFS`` on the input normalised by
    its Frobenius norm, computed in ``dtype`` (default: the input's) on the wide
    orientation (transposed when ``m > n``). Returns ``dtype``.
    """
    a, b, c = NS_COEFFS
    squeeze = G.ndim == 2
    X = G.unsqueeze(0) if squeeze else G  # (B, m, n)
    X = X.to(dtype or G.dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = torch.bmm(X, X.mT)  # (B, m, m)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    if tall:
        X = X.mT
    return X[0] if squeeze else X


def matrix_shape(shape: torch.Size | tuple, conv_transpose: bool = False) -> tuple[int, int]:
    """The ``(rows, cols)`` = ``(fan_out, fan_in)`` a weight of ``shape`` is viewed as."""
    first, rest = shape[0], math.prod(shape[1:])
    return (rest, first) if conv_transpose else (first, rest)


def update_scale(rows: int, cols: int, kind: str) -> float:
    if kind == "spectral":
        return math.sqrt(max(1.0, rows / cols))
    if kind == "match_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"muon scale {kind!r}: unknown; use one of {SCALES}")


@dataclass
class _Bucket:
    """Matrices of one canonical shape ``(m, n)``, ``m <= n``; rank r owns ``entries[starts[r]:starts[r]+counts[r]]``."""

    m: int
    n: int
    entries: list  # indices into _Plan.params
    counts: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    slots: int = 0  # max(counts): matrices per rank in the gathered layout
    offset: int = 0  # element offset of this bucket inside its chunk's per-rank buffer


@dataclass
class _Plan:
    params: list  # (group index, param) of every Muon param, in group order
    flipped: list[bool]  # (shape[0], prod(shape[1:])) is transposed to reach the canonical m <= n
    chunks: list[list[_Bucket]]  # buckets all-gathered together
    chunk_numel: list[int]  # per-rank elements of each chunk
    work: list[float]  # Newton-Schulz FLOPs per rank


def ns_flops(m: int, n: int, steps: int) -> float:
    """Multiply-add FLOPs of ``steps`` Newton-Schulz iterations on an ``(m, n)`` matrix, ``m <= n``."""
    return steps * 2.0 * (2 * m * m * n + m * m * m)


def build_plan(shapes: list[tuple[int, int]], world: int, steps: int = 5, chunk_numel: int = 1 << 22) -> tuple:
    """Shard matrices of ``shapes`` over ``world`` ranks.

    Returns ``(buckets, chunks, work)``: buckets in processing order (costliest
    matrices first), chunks as lists of bucket indices, FLOPs per rank. Each
    matrix goes to the least-loaded rank so far (longest-processing-time first).
    """
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, (r, c) in enumerate(shapes):
        by_shape.setdefault((min(r, c), max(r, c)), []).append(i)
    order = sorted(by_shape, key=lambda s: -ns_flops(s[0], s[1], steps))
    work = [0.0] * world
    buckets = []
    for m, n in order:
        entries = by_shape[(m, n)]
        cost = ns_flops(m, n, steps)
        counts = [0] * world
        for _ in entries:
            r = min(range(world), key=lambda r: (work[r], r))
            counts[r] += 1
            work[r] += cost
        starts = [sum(counts[:r]) for r in range(world)]
        buckets.append(_Bucket(m, n, entries, counts, starts, max(counts)))
    chunks, size = [[]], 0
    for bi, b in enumerate(buckets):
        if chunks[-1] and size >= chunk_numel:
            chunks.append([])
            size = 0
        b.offset = size
        size += b.slots * b.m * b.n
        chunks[-1].append(bi)
    return buckets, chunks, work


class Muon(torch.optim.Optimizer):
    """One optimizer for Muon groups (``use_muon=True``) and AdamW groups (``use_muon=False``).

    Muon group keys: ``lr, momentum, nesterov, ns_steps, weight_decay, scale,
    conv_transpose``; AdamW group keys: ``lr, betas, eps, weight_decay``. Keys a
    group leaves out take the constructor's values. ``ns_dtype`` None means
    bfloat16 on CUDA and float32 elsewhere. ``batch_ns`` None means one batched
    Newton-Schulz call per shape on GPUs and one call per matrix on CPUs (where
    a matrix at a time stays in cache: ~10% faster there). ``process_group``
    None means the default group when one is initialised; with none (or one
    process) all work is local. ``chunk_numel``: elements per rank per all-gather.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        scale: str = "spectral",
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
        ns_dtype: Optional[torch.dtype] = None,
        batch_ns: Optional[bool] = None,
        process_group=None,
        chunk_numel: int = 1 << 22,
    ):
        update_scale(1, 1, scale)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"muon momentum {momentum}: must be in [0, 1)")
        self._muon_defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            weight_decay=weight_decay, scale=scale, conv_transpose=False,
        )
        self._adamw_defaults = dict(lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps, weight_decay=adamw_weight_decay)
        self.ns_dtype = ns_dtype
        self.batch_ns = batch_ns
        self.process_group = process_group
        self.chunk_numel = chunk_numel
        self._plan_cache: dict = {}
        params = list(params)
        if params and isinstance(params[0], Tensor):
            params = [{"params": params, "use_muon": True}]
        super().__init__(params, {})

    def add_param_group(self, param_group: dict) -> None:
        group = dict(param_group)
        if "use_muon" not in group:
            raise ValueError("Muon param group: needs a 'use_muon' flag (True for hidden matrices, False for AdamW)")
        for k, v in (self._muon_defaults if group["use_muon"] else self._adamw_defaults).items():
            group.setdefault(k, v)
        if group["use_muon"]:
            update_scale(1, 1, group["scale"])
            params = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
            for p in params:
                if p.ndim < 2:
                    raise ValueError(f"Muon param group: a {p.ndim}-D parameter {tuple(p.shape)} is not a matrix; put it in an AdamW group")
        super().add_param_group(group)
        self._plan_cache = {}

    # ------------------------------------------------------------------ planning

    def _world(self) -> tuple[int, int, object]:
        if not (dist.is_available() and dist.is_initialized()):
            return 0, 1, None
        pg = self.process_group
        return dist.get_rank(pg), dist.get_world_size(pg), pg

    def plan(self, world: int) -> _Plan:
        """The (cached) sharding of this optimizer's Muon matrices over ``world`` ranks."""
        key = (world, tuple(id(p) for g in self.param_groups if g["use_muon"] for p in g["params"]))
        if key not in self._plan_cache:
            params, shapes = [], []  # shapes: (shape[0], prod(shape[1:])), the storage order
            for gi, g in enumerate(self.param_groups):
                if g["use_muon"]:
                    for p in g["params"]:
                        params.append((gi, p))
                        shapes.append(matrix_shape(p.shape))
            steps = max([g["ns_steps"] for g in self.param_groups if g["use_muon"]] or [5])
            buckets, chunks, work = build_plan(shapes, world, steps, self.chunk_numel)
            flipped = [r > c for r, c in shapes]
            chunk_buckets = [[buckets[i] for i in c] for c in chunks]
            numel = [sum(b.slots * b.m * b.n for b in c) for c in chunk_buckets]
            self._plan_cache = {key: _Plan(params, flipped, chunk_buckets, numel, work)}
        return self._plan_cache[key]

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world, pg = self._world()
        plan = self.plan(world)
        updates = self._momentum(plan)
        pending = self._orthogonalise(plan, updates, rank, world, pg)
        for group in self.param_groups:  # overlaps the all-gathers in flight
            if not group["use_muon"]:
                self._adamw(group)
        for chunk, gathered, work in pending:
            if work is not None:
                work[0].wait()
            self._apply(plan, chunk, gathered, updates)
        return loss

    def _momentum(self, plan: _Plan) -> list[Optional[Tensor]]:
        """Update every momentum buffer; returns the update to orthogonalise per plan entry (None: no grad)."""
        updates: list[Optional[Tensor]] = [None] * len(plan.params)
        index = {id(p): i for i, (_, p) in enumerate(plan.params)}
        for group in self.param_groups:
            if not group["use_muon"]:
                continue
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            grads = [p.grad for p in ps]
            bufs = []
            for p in ps:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            m = group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1.0 - m)
            outs = torch._foreach_lerp(grads, bufs, m) if group["nesterov"] else bufs
            for p, u in zip(ps, outs):
                updates[index[id(p)]] = u
        return updates

    def _ns_dtype(self, device: torch.device) -> torch.dtype:
        if self.ns_dtype is not None:
            return self.ns_dtype
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    def _orthogonalise(self, plan: _Plan, updates: list, rank: int, world: int, pg) -> list:
        """Newton-Schulz of this rank's share, chunk by chunk; returns ``[(chunk, gathered, work)]``.

        ``gathered`` is ``(world, chunk_numel)`` (or, with one process, a list of
        per-bucket ``(count, m, n)`` results); ``work`` the pending all-gather.
        """
        if not plan.params:
            return []
        device = plan.params[0][1].device
        dtype = self._ns_dtype(device)
        steps_of = {gi: g["ns_steps"] for gi, g in enumerate(self.param_groups) if g["use_muon"]}
        batched = self.batch_ns if self.batch_ns is not None else device.type != "cpu"
        pending = []
        for chunk, numel in zip(plan.chunks, plan.chunk_numel):
            send = torch.empty(numel, dtype=dtype, device=device) if world > 1 else None
            local = []
            for b in chunk:
                own = b.entries[b.starts[rank] : b.starts[rank] + b.counts[rank]]
                if not own:
                    local.append(None)
                    continue
                mats = []
                for i in own:
                    u, (_, p) = updates[i], plan.params[i]
                    if u is None:
                        u = torch.zeros_like(p)
                    u = u.reshape(b.n, b.m).mT if plan.flipped[i] else u.reshape(b.m, b.n)
                    mats.append(u)
                steps = {steps_of[plan.params[i][0]] for i in own}
                X = torch.stack(mats).to(dtype)  # (count, m, n)
                if batched and len(steps) == 1:
                    X = newton_schulz(X, steps.pop())
                else:
                    X = torch.stack([newton_schulz(x, steps_of[plan.params[i][0]]) for x, i in zip(X, own)])
                if send is None:
                    local.append(X)
                else:
                    send[b.offset : b.offset + X.numel()].copy_(X.reshape(-1))
            if send is None:
                pending.append((chunk, local, None))
            else:
                recv = torch.empty(world * numel, dtype=dtype, device=device)  # gloo wants the flat form
                work = _all_gather(recv, send, group=pg, async_op=True)
                pending.append((chunk, recv.view(world, numel), (work, send)))  # send lives until the wait
        return pending

    def _apply(self, plan: _Plan, chunk: list[_Bucket], gathered, updates: list) -> None:
        """Decay and update every parameter of ``chunk`` that has a gradient here (foreach, by factor)."""
        decay: dict[float, list[Tensor]] = {}
        add: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
        for bi, b in enumerate(chunk):
            for r in range(len(b.counts)):
                if b.counts[r] == 0:
                    continue
                if isinstance(gathered, list):
                    mats = gathered[bi]
                else:
                    mats = gathered[r, b.offset : b.offset + b.counts[r] * b.m * b.n].view(b.counts[r], b.m, b.n)
                for j, i in enumerate(b.entries[b.starts[r] : b.starts[r] + b.counts[r]]):
                    if updates[i] is None:
                        continue
                    gi, p = plan.params[i]
                    group = self.param_groups[gi]
                    o = mats[j].mT if plan.flipped[i] else mats[j]  # (m, n) -> (shape[0], prod(shape[1:]))
                    rows, cols = matrix_shape(p.shape, group["conv_transpose"])
                    if group["weight_decay"]:
                        decay.setdefault(1.0 - group["lr"] * group["weight_decay"], []).append(p)
                    ps, os = add.setdefault(-group["lr"] * update_scale(rows, cols, group["scale"]), ([], []))
                    ps.append(p)
                    os.append(o.reshape(p.shape))
        for factor, ps in decay.items():
            torch._foreach_mul_(ps, factor)
        for alpha, (ps, os) in add.items():
            torch._foreach_add_(ps, os, alpha=alpha)

    def _adamw(self, group: dict) -> None:
        ps = [p for p in group["params"] if p.grad is not None]
        if not ps:
            return
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        by_step: dict[int, list[Tensor]] = {}
        for p in ps:
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            by_step.setdefault(state["step"], []).append(p)
        for step, params in by_step.items():
            grads = [p.grad for p in params]
            m1 = [self.state[p]["exp_avg"] for p in params]
            m2 = [self.state[p]["exp_avg_sq"] for p in params]
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_lerp_(m1, grads, 1.0 - beta1)
            torch._foreach_mul_(m2, beta2)
            torch._foreach_addcmul_(m2, grads, grads, 1.0 - beta2)
            bc1 = 1.0 - beta1**step
            bc2_sqrt = math.sqrt(1.0 - beta2**step)
            denom = torch._foreach_sqrt(m2)
            torch._foreach_div_(denom, bc2_sqrt)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, m1, denom, -lr / bc1)
