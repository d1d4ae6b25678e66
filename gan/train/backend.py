"""How G and D are wrapped, run and stepped: plain Accelerate (DDP) or DeepSpeed, behind one interface.

    backend = build_backend(cfg, run_dir)             # DeepSpeed when the launcher asked for it
    G, D, opt_g, opt_d = backend.prepare(g, d, opt_g, opt_d)
    with backend.no_sync(G, skip=i < k - 1), backend.autocast():
        loss = ...
    backend.backward(G, loss / k, last=i == k - 1)
    norm, stepped, finite = backend.clip_and_step(G, opt_g, clip=1e3, loss_finite=True)

The trainer calls only these methods, so it has no backend branches. Both backends own an
``accelerator`` (process group, device, trackers, ``save_state`` / ``load_state``).
"""
from __future__ import annotations

import math
import re
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from gan.config import Config
from gan.log import drop_stderr_lines
from gan.train import ds

# What DDP prints on its first training forward when find_unused_parameters finds none (C++, straight to stderr)
UNUSED_PARAMETERS_WARNING = re.compile(r"find_unused_parameters=True was specified in DDP constructor, but did "
                                       r"not find any unused parameters")


class Backend:
    """The plain path: Accelerate's DDP wrappers, autocast, ``no_sync`` and gradient clipping."""

    name = "accelerate"

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def prepare(self, g, d, opt_g, opt_d) -> tuple:
        """``(G, D, opt_g, opt_d)`` wrapped for this backend (two DDP wrappers: G and D reduce separately)."""
        G, D, opt_g, opt_d = self.accelerator.prepare(g, d, opt_g, opt_d)
        for model in (G, D):
            quiet_unused_parameters_warning(model)
        return G, D, opt_g, opt_d

    def autocast(self):
        return self.accelerator.autocast()

    def no_sync(self, model, skip: bool):
        """DDP's ``no_sync`` on all but the last micro-batch of an accumulated step."""
        return self.accelerator.no_sync(model) if skip else nullcontext()

    def backward(self, model, loss: torch.Tensor, last: bool) -> None:
        """Backward of one micro-batch's loss (already divided by the micro-batch count)."""
        self.accelerator.backward(loss)

    def clip_and_step(self, model, opt, clip: float | None, loss_finite: bool) -> tuple[float, bool, bool]:
        """Clip to ``clip`` (None: measure only), step unless any rank's norm or loss is non-finite, zero grads.

        Returns ``(grad_norm, stepped, finite)``. Every rank agrees, so every rank steps (and runs
        Muon's collectives) or none does.
        """
        norm = float(self.accelerator.clip_grad_norm_(model.parameters(), clip if clip is not None else math.inf))
        (finite,) = self.all_true(math.isfinite(norm) and loss_finite)
        if finite:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return norm, finite, finite

    def check_resume(self, path: Path) -> None:
        """Refuse a checkpoint written by the other backend (``CheckpointError``)."""
        ds.check_resume(path, False, self.accelerator.num_processes)

    def any_true(self, *flags: bool) -> list[bool]:
        """Agree across ranks (one all-reduce): each flag is true when any rank says so."""
        if self.accelerator.num_processes == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.accelerator.device)
        return [bool(v > 0) for v in self.accelerator.reduce(t, reduction="sum").tolist()]

    def all_true(self, *flags: bool) -> list[bool]:
        """Agree across ranks (one all-reduce): each flag is true only when every rank says so."""
        return [not f for f in self.any_true(*(not f for f in flags))]


class DeepSpeedBackend(Backend):
    """Two DeepSpeed ZeRO-1/2 engines (``gan.train.ds``): each clips, steps, skips and accumulates itself."""

    name = "deepspeed"

    def __init__(self, accelerator: Accelerator, mixed_precision: str):
        super().__init__(accelerator)
        self.engines = ds.Engines(accelerator, mixed_precision)

    def prepare(self, g, d, opt_g, opt_d) -> tuple:
        return self.engines.prepare(g, d, opt_g, opt_d)  # one engine per network

    def autocast(self):
        return self.engines.autocast()

    def no_sync(self, model, skip: bool):
        return nullcontext()  # the engine's accumulation boundary does this

    def backward(self, model, loss: torch.Tensor, last: bool) -> None:
        self.engines.backward(model, loss, last)

    def clip_and_step(self, model, opt, clip: float | None, loss_finite: bool) -> tuple[float, bool, bool]:
        norm = self.engines.step(model)  # the engine skips a step whose global norm is not finite
        stepped = math.isfinite(norm)
        (finite,) = self.all_true(stepped and loss_finite)
        return norm, stepped, finite

    def check_resume(self, path: Path) -> None:
        ds.check_resume(path, True, self.accelerator.num_processes)


def quiet_unused_parameters_warning(model: torch.nn.Module) -> None:
    """Drop DDP's "find_unused_parameters=True ... did not find any unused parameters" warning, which it prints
    once per process on its first training forward, from that forward of ``model`` (a DDP wrapper on the CPU).

    The setting is deliberate (``build_backend``: it keeps DDP's first gradient buckets, which exact resume
    needs), and every parameter is used, so the warning's advice to turn it off would break resume: noise to
    the user. Torch prints it from C++, past Python's ``warnings`` filters, hence a filter on standard error
    around that one forward (``gan.log.drop_stderr_lines``); every other line goes through.
    """
    if not (isinstance(model, torch.nn.parallel.DistributedDataParallel) and model.find_unused_parameters):
        return
    held = []

    def before(module, args):
        if torch.is_grad_enabled() and not held:  # DDP looks for unused parameters in training forwards only
            held.append(drop_stderr_lines(UNUSED_PARAMETERS_WARNING))
            held[0].__enter__()

    def after(module, args, output):
        if held:
            held.pop().__exit__(None, None, None)
            for handle in handles:
                handle.remove()

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after, always_call=True)]


def build_backend(cfg: Config, run_dir: str | Path) -> Backend:
    """The backend the launcher asked for, with trackers logging under ``run_dir`` (``cfg.trainer.log_with``).

    DeepSpeed when ``accelerate launch`` ran with a DeepSpeed config (refusing Muon, ZeRO-3 and
    offload with a ``ConfigError``), else plain Accelerate on CUDA when present, else the CPU.
    """
    t = cfg.trainer
    tracking = {"log_with": list(t.log_with) or None,
                "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir))}
    if ds.deepspeed_requested():
        accelerator = Accelerator(**ds.accelerator_kwargs(cfg), **tracking)
        return DeepSpeedBackend(accelerator, t.mixed_precision)
    # On CPU, DDP keeps its first gradient buckets (find_unused_parameters turns the rebuild after the first step
    # off): gloo sums a bucket in chunks, so a resumed run must bucket like an unbroken one to add the same
    # gradients in the same order (bit-exact resume with 3+ processes). On CUDA, speed first. DDP's warning that
    # it found no unused parameters is expected then, and dropped (quiet_unused_parameters_warning).
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=not torch.cuda.is_available())
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=t.mixed_precision,
                              dynamo_backend="inductor" if t.compile else "no", kwargs_handlers=[ddp], **tracking)
    return Backend(accelerator)
