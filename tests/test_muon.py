"""Muon: update equals a plain per-matrix reference, sharding plan, state round trip, 2-process runs."""
from __future__ import annotations

import copy
import math
import os
import sys

import pytest
import torch
import torch.nn as nn

from conftest import ROOT
from gan.optim.muon import Muon, build_plan, matrix_shape, newton_schulz, ns_flops, update_scale
from helpers import free_port, run_launch

sys.path.insert(0, str(ROOT / "tests"))
import _muon_dist  # noqa: E402


# --------------------------------------------------------------------------- reference (per matrix, no batching)


def ref_newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if tall else X


def ref_muon_step(p, grad, buf, lr, momentum=0.95, wd=0.0, nesterov=True, scale="spectral", conv_transpose=False,
                  steps=5):
    buf.mul_(momentum).add_(grad, alpha=1 - momentum)
    u = grad * (1 - momentum) + buf * momentum if nesterov else buf
    first, rest = p.shape[0], math.prod(p.shape[1:])
    O = ref_newton_schulz(u.reshape(first, rest), steps).reshape(p.shape)
    fan_out, fan_in = (rest, first) if conv_transpose else (first, rest)
    s = math.sqrt(max(1, fan_out / fan_in)) if scale == "spectral" else 0.2 * math.sqrt(max(fan_out, fan_in))
    p.mul_(1 - lr * wd).add_(O, alpha=-lr * s)


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 8), (8, 16), (12, 4, 3), (12, 4, 3), (12, 4, 3), (6, 12, 5), (5, 7, 2, 3)]
    return [nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


# --------------------------------------------------------------------------- pieces


def test_newton_schulz_batched_equals_per_matrix():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 8, 24), (2, 24, 8), (1, 16, 16)]:
        G = torch.randn(shape, generator=g)
        out = newton_schulz(G, 5)
        ref = torch.stack([ref_newton_schulz(x) for x in G])
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert newton_schulz(G[0], 5).shape == (16, 16)


def test_newton_schulz_orthogonalises():
    G = torch.randn(32, 96, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(newton_schulz(G, 5))
    assert s.min() > 0.5 and s.max() < 1.25, s  # the quintic lands singular values in ~[0.7, 1.2]
    assert newton_schulz(torch.zeros(4, 6), 5).abs().max() == 0


def test_matrix_shape_and_scale_by_hand():
    assert matrix_shape((64, 32, 7)) == (64, 224)
    assert matrix_shape((32, 16, 8), conv_transpose=True) == (128, 32)  # (in, out, k): fan_out = out * k
    assert update_scale(128, 32, "spectral") == 2.0
    assert update_scale(32, 128, "spectral") == 1.0
    assert update_scale(100, 64, "match_adamw") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="scale"):
        update_scale(1, 1, "rms")


def test_plan_covers_every_matrix_once_and_balances():
    shapes = [(64, 448)] * 7 + [(448, 64)] + [(128, 64)] * 3 + [(32, 32)] + [(256, 1792)] * 2
    for world in (1, 2, 3):
        buckets, chunks, work = build_plan(shapes, world, 5, chunk_numel=50_000)
        owned = sorted(i for b in buckets for i in b.entries)
        assert owned == list(range(len(shapes)))
        assert sorted(bi for c in chunks for bi in c) == list(range(len(buckets)))
        for b in buckets:
            assert sum(b.counts) == len(b.entries) and b.slots == max(b.counts)
            assert b.starts == [sum(b.counts[:r]) for r in range(world)]
        total = sum(ns_flops(min(s), max(s), 5) for s in shapes)
        assert sum(work) == pytest.approx(total)
    # (64, 448) and (448, 64) share a bucket (transposed); the big pair and the rest split evenly
    buckets, chunks, work = build_plan(shapes, 2, 5, chunk_numel=50_000)
    assert [(b.m, b.n, b.counts) for b in buckets][:2] == [(256, 1792, [1, 1]), (64, 448, [4, 4])]
    assert max(work) / sum(work) <= 0.55
    assert len(chunks) > 1


def test_plan_gives_each_matrix_to_the_least_loaded_rank():
    big, small = (256, 1792), (64, 448)  # one big costs ~64 small ones
    buckets, _, work = build_plan([big] * 3 + [small] * 8, 2, 5)
    assert [b.counts for b in buckets] == [[2, 1], [0, 8]]
    assert work == [2 * ns_flops(256, 1792, 5), ns_flops(256, 1792, 5) + 8 * ns_flops(64, 448, 5)]


# --------------------------------------------------------------------------- single-process update


@pytest.mark.parametrize(
    "nesterov,scale,wd,chunk,batch",
    [(True, "spectral", 0.0, 1 << 22, True), (False, "match_adamw", 0.1, 1, False), (True, "spectral", 0.1, 1, None)],
)
def test_muon_equals_reference(nesterov, scale, wd, chunk, batch):
    params = _params()
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    ct = params[5]  # treated as a transposed conv (in, out, k)
    opt = Muon(
        [{"params": [p for p in params if p is not ct], "use_muon": True},
         {"params": [ct], "use_muon": True, "conv_transpose": True, "lr": 0.03}],
        lr=0.02, nesterov=nesterov, scale=scale, weight_decay=wd, chunk_numel=chunk, batch_ns=batch,
    )
    for step in range(3):
        grads = _grads(params, step)
        for p, g, r, b in zip(params, grads, ref, bufs):
            p.grad = g.clone()
            is_ct = p is ct
            ref_muon_step(r, g, b, 0.03 if is_ct else 0.02, nesterov=nesterov, scale=scale, wd=wd, conv_transpose=is_ct)
        opt.step()
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)
    for p, b in zip(params, bufs):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], b, rtol=1e-6, atol=1e-7)


def test_groups_with_different_ns_steps_share_a_bucket():
    a, b = nn.Parameter(torch.randn(6, 10)), nn.Parameter(torch.randn(10, 6))  # one (6, 10) bucket
    ra, rb = a.detach().clone(), b.detach().clone()
    opt = Muon([{"params": [a], "use_muon": True, "ns_steps": 3}, {"params": [b], "use_muon": True}], lr=0.1)
    a.grad, b.grad = torch.randn(6, 10), torch.randn(10, 6)
    ref_muon_step(ra, a.grad, torch.zeros_like(ra), 0.1, steps=3)
    ref_muon_step(rb, b.grad, torch.zeros_like(rb), 0.1, steps=5)
    opt.step()
    torch.testing.assert_close(a.detach(), ra, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach(), rb, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref_newton_schulz(a.grad, 3), ref_newton_schulz(a.grad, 5), atol=1e-3)


def test_adamw_groups_equal_torch_adamw():
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(1, 4, 1)), nn.Parameter(torch.randn(3, 3))]
    b = [nn.Parameter(x.detach().clone()) for x in a]
    ours = Muon([{"params": a, "use_muon": False}], adamw_lr=3e-3, adamw_betas=(0.8, 0.99), adamw_weight_decay=0.05)
    ref = torch.optim.AdamW(b, lr=3e-3, betas=(0.8, 0.99), weight_decay=0.05, foreach=False)
    for step in range(4):
        for x, y in zip(a, b):
            x.grad = torch.randn_like(x)
            y.grad = x.grad.clone()
        if step == 2:  # a parameter without a gradient is skipped by both
            a[0].grad = b[0].grad = None
        ours.step()
        ref.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    assert ours.state[a[0]]["step"] == 3 and ours.state[a[1]]["step"] == 4


def test_param_without_grad_is_untouched():
    params = _params()
    before = [p.detach().clone() for p in params]
    opt = Muon([{"params": params, "use_muon": True}])
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    params[2].grad = None  # one of three same-shape matrices
    opt.step()
    assert torch.equal(params[2], before[2]) and params[2] not in opt.state
    assert not torch.equal(params[3], before[3])


def test_state_dict_round_trip_continues_exactly():
    def run(steps, resume_at=None):
        params = _params()
        opt = Muon([{"params": params[:4], "use_muon": True}, {"params": params[4:], "use_muon": False}], weight_decay=0.01)
        for step in range(steps):
            if step == resume_at:
                sd = copy.deepcopy(opt.state_dict())
                params = [nn.Parameter(p.detach().clone()) for p in params]
                opt = Muon([{"params": params[:4], "use_muon": True}, {"params": params[4:], "use_muon": False}], lr=9.0)
                opt.load_state_dict(sd)
            for p, g in zip(params, _grads(params, step)):
                p.grad = g
            opt.step()
        return params, opt

    full, opt_a = run(5)
    resumed, opt_b = run(5, resume_at=2)
    for x, y in zip(full, resumed):
        assert torch.equal(x, y)
    assert opt_b.param_groups[0]["lr"] == 1e-2  # hyper-parameters come from the checkpoint


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="use_muon"):
        Muon([{"params": _params()}])
    with pytest.raises(ValueError, match="not a matrix"):
        Muon([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": True}])
    with pytest.raises(ValueError, match="scale"):
        Muon(_params(), scale="bogus")


# --------------------------------------------------------------------------- two processes (gloo)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_match_one_and_resume_exactly(tmp_path):
    """accelerate launch, 2 CPU processes over gloo, DDP: same parameters as 1 process; resume == uninterrupted."""
    out = tmp_path / "dist.pt"
    cmd = [
        str(ROOT / ".venv" / "bin" / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(ROOT / "tests" / "_muon_dist.py"), "--out", str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = run_launch(cmd, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = torch.load(out, weights_only=True)
    assert res["world"] == 2
    # every rank ends with identical parameters and identical, complete optimizer state
    assert res["params_equal_across_ranks"] and res["state_equal_across_ranks"]
    assert res["state_complete"]
    # save at step 2 -> load in fresh objects -> continue == uninterrupted, bit for bit
    for k, v in res["uninterrupted"].items():
        assert torch.equal(v, res["resumed"][k]), k
    # the 2-process run equals a 1-process run on the whole batch
    one = _muon_dist.train(_muon_dist.STEPS)
    moved = 0
    for k, v in one.items():
        torch.testing.assert_close(res["uninterrupted"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved += not torch.equal(v, _muon_dist.build_model().state_dict()[k])
    assert moved == len(one) - 1  # all but the unused matrix moved
    # the work was split: each rank ran Newton-Schulz on about half the FLOPs
    assert max(res["ns_flops"]) <= 0.6 * sum(res["ns_flops"])


def test_one_process_resume_equals_uninterrupted(tmp_path):
    """The 2-process script's loop in 1 process, no process group: save at step 2 -> load -> continue."""
    full = _muon_dist.train(_muon_dist.STEPS)
    resumed = _muon_dist.train(_muon_dist.STEPS, _muon_dist.RESUME_AT, tmp_path / "ckpt.pt")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
