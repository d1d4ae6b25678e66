"""Optimizers and learning-rate schedules built from the typed ``optim`` config.

    muon, adamw = split_params(model)               # which tensors Muon trains
    opt = build_optimizer(model, cfg.optim.generator)
    sched = build_scheduler(opt, cfg.optim.generator.scheduler, total_steps=cfg.trainer.max_steps)

Routing (``route``): Muon trains hidden weight matrices; AdamW trains vectors
(biases, norms), weight-norm magnitudes (``weight_g`` /
``parametrizations.weight.original0``), Snake alphas ``(1, C, 1)`` and any tensor
whose matrix view ``(shape[0], prod(shape[1:]))`` has a side of 1, the input and
output layers (convs or linears from or to at most ``io_channels`` = 2 channels:
the audio, its 2x patches, an STFT's real and imaginary parts), depthwise
convs (a filter per channel is no matrix) and embeddings. With weight norm the
direction (``weight_v`` / ``original1``) is the matrix Muon trains.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler

from gan.config import OptimizerConfig, SchedulerConfig
from gan.optim.muon import Muon, matrix_shape

_CONV = nn.modules.conv._ConvNd
_CONV_T = nn.modules.conv._ConvTransposeNd


def _owners(model: nn.Module) -> dict[int, nn.Module]:
    """Parameter id -> the innermost conv / linear / embedding holding it (weight-norm parts included)."""
    owners: dict[int, nn.Module] = {}
    for module in model.modules():  # parents before children: the innermost owner wins
        if isinstance(module, (_CONV, nn.Linear, nn.Embedding)):
            for p in module.parameters():
                owners[id(p)] = module
    return owners


IO_CHANNELS = 2


def route(name: str, p: torch.Tensor, owner: Optional[nn.Module], io_channels: int = IO_CHANNELS) -> tuple[str, str]:
    """``("muon" | "adamw", reason)`` for parameter ``name`` of ``owner``."""
    if p.ndim < 2:
        return "adamw", "vector"
    if name.endswith("weight_g") or name.endswith(".original0"):
        return "adamw", "weight-norm magnitude"
    if isinstance(owner, nn.Embedding):
        return "adamw", "embedding"
    if isinstance(owner, _CONV):
        if min(owner.in_channels, owner.out_channels) <= io_channels:
            return "adamw", f"input/output conv (<= {io_channels} channels)"
        if owner.groups == owner.in_channels:
            return "adamw", "depthwise conv"
    if isinstance(owner, nn.Linear) and min(owner.in_features, owner.out_features) <= io_channels:
        return "adamw", f"input/output linear (<= {io_channels} features)"
    if 1 in matrix_shape(p.shape):
        return "adamw", "matrix view has a side of 1 (gain, Snake alpha)"
    return "muon", "hidden matrix"


def split_named_params(
    model: nn.Module, io_channels: int = IO_CHANNELS
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """``(muon, adamw)`` lists of ``(name, param)``; frozen parameters are left out, shared ones counted once."""
    owners = _owners(model)
    muon, adamw = [], []
    for name, p in model.named_parameters():  # named_parameters() already skips duplicates
        if not p.requires_grad:
            continue
        kind, _ = route(name, p, owners.get(id(p)), io_channels)
        (muon if kind == "muon" else adamw).append((name, p))
    return muon, adamw


def split_params(model: nn.Module, io_channels: int = IO_CHANNELS) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(muon_params, adamw_params)`` of ``model`` (see the module docstring for the rules)."""
    muon, adamw = split_named_params(model, io_channels)
    return [p for _, p in muon], [p for _, p in adamw]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """``Muon`` (hidden matrices) + AdamW groups when ``cfg.name == "muon"``, else ``torch.optim.AdamW``.

    Param groups carry a ``name``: ``muon``, ``muon_conv_transpose`` (transposed-conv
    weights ``(in, out, k)``, whose scale uses ``fan_out = out * k``) and ``adamw``.
    """
    adamw_kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW([{"params": params, "name": "adamw"}], **adamw_kw)
    if cfg.name != "muon":
        raise ValueError(f"optimizer {cfg.name!r}: unknown; use muon or adamw")
    # a model may declare a wider signal side (e.g. patching folds P samples into P channels)
    muon, adamw = split_params(model, max(IO_CHANNELS, getattr(model, "io_channels", 1)))
    owners = _owners(model)
    transposed = [p for p in muon if isinstance(owners.get(id(p)), _CONV_T)]
    ids = {id(p) for p in transposed}
    groups = [
        {"params": [p for p in muon if id(p) not in ids], "use_muon": True, "name": "muon"},
        {"params": transposed, "use_muon": True, "conv_transpose": True, "name": "muon_conv_transpose"},
        {"params": adamw, "use_muon": False, "name": "adamw"},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return Muon(
        groups,
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        nesterov=cfg.muon_nesterov,
        ns_steps=cfg.muon_ns_steps,
        weight_decay=cfg.muon_weight_decay,
        scale=cfg.muon_scale,
        adamw_lr=cfg.lr,
        adamw_betas=tuple(cfg.betas),
        adamw_eps=cfg.eps,
        adamw_weight_decay=cfg.weight_decay,
    )


# --------------------------------------------------------------------------- schedules


def lr_factor(cfg: SchedulerConfig, step: int, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): a pure function of the step.

    Linear warmup ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, then
    exponential ``gamma ** (step - warmup_steps)``, cosine from 1 down to
    ``min_lr_ratio`` at ``total_steps``, or constant 1.
    """
    w = cfg.warmup_steps
    if step < w:
        return (step + 1) / w
    s = step - w
    if cfg.name == "exponential":
        return cfg.gamma**s
    if cfg.name == "cosine":
        progress = min(1.0, s / max(1, total_steps - w))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "constant":
        return 1.0
    raise ValueError(f"scheduler {cfg.name!r}: unknown; use exponential, cosine or constant")


class StepSchedule(LRScheduler):
    """``lr = initial_lr * lr_factor(cfg, step, total_steps)`` for every param group.

    Loading a state dict restores only the position (``last_epoch``): the initial
    lrs and the schedule come from the config the run was resumed with, and the
    param groups are set to that schedule at once, so a changed lr applies from the
    first resumed step.
    """

    _CONFIG_KEYS = ("cfg", "total_steps")
    _FROM_CONFIG = ("base_lrs", "_last_lr")

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int, last_epoch: int = -1):
        self.cfg = cfg
        self.total_steps = total_steps
        lr_factor(cfg, 0, total_steps)  # validates the name
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        f = lr_factor(self.cfg, self.last_epoch, self.total_steps)
        return [base * f for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k not in self._CONFIG_KEYS}

    def load_state_dict(self, state_dict: dict) -> None:
        skip = self._CONFIG_KEYS + self._FROM_CONFIG
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in skip})
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> StepSchedule:
    """Per-step schedule; call ``.step()`` once after every optimizer step."""
    if total_steps <= 0:
        raise ValueError(f"build_scheduler: total_steps {total_steps} must be positive")
    return StepSchedule(optimizer, cfg, total_steps)
