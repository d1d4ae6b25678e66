"""Loading a trained generator for inference: a run dir, step dir or ``generator.pt`` ->
the model rebuilt from the checkpoint's own ``config.yaml``, in eval mode.

    loaded = load_generator("runs/demo")       # follows checkpoints/latest
    loaded.model(x)                            # (B, 1, T) -> (B, 1, T) at 48 kHz
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gan.config import Config, ConfigError, config_from_dict
from gan.dsp.chunking import round_up
from gan.errors import first_line
from gan.train.checkpoint import CheckpointError, CheckpointManager, read_torch_file, strip_wrapper_prefixes


@dataclass
class LoadedGenerator:
    model: torch.nn.Module
    cfg: Config
    step: int
    ema: bool
    path: Path  # the generator.pt that was loaded


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir (follows ``checkpoints/latest``), a step dir or a ``generator.pt`` -> the step dir."""
    p = Path(path)
    hint = "pass a run directory, a checkpoints/step_XXXXXXXXX directory or its generator.pt"
    if p.is_file() and p.name == "generator.pt":
        return p.parent
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {path}: not found; {hint}")
    if (p / "generator.pt").is_file():
        return p
    if (p / "checkpoints").is_dir():
        try:
            latest = CheckpointManager(p).latest()
        except CheckpointError:
            latest = None
        if latest is None or not (latest / "generator.pt").is_file():
            raise CheckpointError(f"checkpoint {path}: run directory has no complete checkpoint "
                                  f"(checkpoints/latest missing or stale); {hint}")
        return latest
    raise CheckpointError(f"checkpoint {path}: no generator.pt and no checkpoints/ folder; {hint}")


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Rebuild the generator from the checkpoint's ``config.yaml`` and load ``generator.pt`` (eval mode, no grad).

    ``path``: a run directory (follows ``checkpoints/latest``), a step directory or its
    ``generator.pt``. Keys saved from a compiled or DDP-wrapped model (``_orig_mod.``,
    ``module.``) are accepted. The model maps ``(B, 1, T)`` to ``(B, 1, T)`` at 48 kHz.
    Raises ``CheckpointError`` (one line) for a missing, incomplete or unreadable checkpoint or
    weights that do not fit the config: the first missing and unexpected keys, counted.
    """
    import yaml

    from generators import build_generator

    step_dir = resolve_checkpoint(path)
    cfg_path, weights = step_dir / "config.yaml", step_dir / "generator.pt"
    if not cfg_path.is_file():
        raise CheckpointError(f"checkpoint {step_dir}: config.yaml missing; the checkpoint is incomplete")
    try:
        cfg = config_from_dict(yaml.safe_load(cfg_path.read_text()) or {})
    except (yaml.YAMLError, ConfigError) as e:
        raise CheckpointError(f"checkpoint {cfg_path}: unusable config ({str(e).splitlines()[0]})") from None
    try:
        blob = read_torch_file(weights)  # on the CPU, whatever device wrote it; moved to ``device`` below
        state = blob["state_dict"]
    except Exception as e:  # torch raises many types for truncated or foreign files
        msg = first_line(e)
        raise CheckpointError(f"checkpoint {weights}: unreadable ({msg}); pick another checkpoint") from None
    model = build_generator(cfg.generator)
    state = strip_wrapper_prefixes(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing (first: {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (first: {unexpected[0]})"] if unexpected else []
        raise CheckpointError(f"checkpoint {weights}: weights do not fit the generator in its config.yaml: "
                              f"{', '.join(parts)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # same keys, other shapes
        shape = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), first_line(e))
        raise CheckpointError(f"checkpoint {weights}: weights do not fit the generator in its config.yaml "
                              f"({shape[:200]})") from None
    model.eval().requires_grad_(False).to(device)
    return LoadedGenerator(model, cfg, int(blob.get("step", 0)), bool(blob.get("ema", False)), weights)


def generator_geometry(model: torch.nn.Module, cfg_generator) -> tuple[int, int]:
    """(alignment, context) in samples for chunking: the total stride, and how far one output
    sample reaches into the input on either side (``input_span``; else the whole receptive field)."""
    stride = int(getattr(cfg_generator, "total_stride", 1))
    if hasattr(model, "input_span"):
        spans = [(t, *model.input_span((t, t))) for t in range(stride)]
        reach = max(max(t - a, b - t) for t, a, b in spans)
    else:
        reach = int(model.receptive_field())
    return stride, round_up(reach, stride)
