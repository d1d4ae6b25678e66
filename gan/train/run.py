"""Starting a run the way ``launch/train.py`` does: config lookup, run directory, and resume with the
run's own settings (only mid-run changes allowed).

    trainer = run_from_args("cpu", None, ["trainer.max_steps=10"], resume="auto")
    trainer.train()
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from gan.config import Config, ConfigError, load_config, to_dict
from gan.config.loader import RENAMED_KEYS
from gan.data.preprocess import same_folder
from gan.log import get_logger
from gan.train.trainer import Trainer

log = get_logger(__name__)


# What --set may change when a run resumes; anything else would rewrite the run's history.
RESUMABLE = ("trainer.max_steps", "trainer.log_every", "trainer.val_every", "trainer.save_every",
             "trainer.save_every_minutes", "trainer.keep_last", "trainer.keep_every", "trainer.max_nonfinite_skips",
             "trainer.threads", "data.num_workers", "optim.generator.lr", "optim.generator.muon_lr",
             "optim.discriminator.lr", "optim.discriminator.muon_lr", "optim.generator.grad_clip",
             "optim.discriminator.grad_clip")


def resume_config(checkpoint: Path, overrides: list[str]) -> Config:
    """The config a run resumes with: its own resolved ``config.yaml`` plus the mid-run ``--set`` changes.

    Each change is said in one line (a new ``trainer.max_steps`` with what it does to the learning
    rates, ``lr_change``); ``trainer.pretrain_steps`` may change while the step is below both
    values (the stage boundary has not been passed); a path naming the same folder as the run's
    (``/music/`` for ``/music``) is no change. Raises ``ConfigError`` naming the key for any other change.
    """
    import yaml

    from gan.config import config_from_dict

    saved = config_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text()) or {})
    cfg = config_from_dict(to_dict(saved), overrides)
    step = int(checkpoint.name.rsplit("_", 1)[-1]) if checkpoint.name.startswith("step_") else 0
    for o in overrides:
        key = RENAMED_KEYS.get(o.split("=", 1)[0].strip(), o.split("=", 1)[0].strip())
        old, new = _get(saved, key), _get(cfg, key)
        if old != new and _is_path(saved, key) and same_folder(old, new):
            _set(cfg, key, old)  # the same folder written otherwise (/music/ for /music): the run's own spelling
            continue
        if old == new:
            continue
        stage_ok = key == "trainer.pretrain_steps" and step < min(old, new)
        if key not in RESUMABLE and not stage_ok:
            raise ConfigError(f"--set {key}: cannot change when resuming at step {step} (it would rewrite the "
                              f"run's history: {old!r} -> {new!r}); start a new --run-dir instead")
        jump = lr_change(saved, cfg, step) if key == "trainer.max_steps" else ""
        log.info("resume: %s %r -> %r%s", key, old, new, jump)
    return cfg


def lr_change(saved: Config, cfg: Config, step: int) -> str:
    """What a new ``trainer.max_steps`` does to the learning rates at the resume ``step``; ``""`` when little.

    A schedule that depends on the run's length (cosine) is stretched: the rate at ``step`` under
    the new length, against the rate under the old one, for G (over every step) and D (over the
    adversarial steps). Changes within 5 % are not mentioned.
    """
    from gan.optim.params import lr_factor

    parts = []
    for net in ("generator", "discriminator"):
        start = 0 if net == "generator" else cfg.trainer.pretrain_steps
        if net == "discriminator" and start >= cfg.trainer.max_steps:
            continue  # D never trains in this run
        pos = max(0, step - start)
        a = getattr(saved.optim, net).lr * lr_factor(getattr(saved.optim, net).scheduler, pos,
                                                     max(1, saved.trainer.max_steps - start))
        b = getattr(cfg.optim, net).lr * lr_factor(getattr(cfg.optim, net).scheduler, pos,
                                                   max(1, cfg.trainer.max_steps - start))
        if abs(b - a) > 0.05 * max(a, b):
            parts.append(f"{net} {a:.3g} -> {b:.3g}" + (f" ({b / a:.3g}x)" if a > 0 else ""))
    if not parts:
        return ""
    return f"; the learning rate at step {step} changes with the schedule's new length: {', '.join(parts)}"


def _is_path(cfg, dotted: str) -> bool:
    """Whether the config field ``dotted`` holds a path (``metadata["path"]`` in the schema)."""
    parent, name = dotted.rpartition(".")[::2]
    node = _get(cfg, parent) if parent else cfg
    return dataclasses.is_dataclass(node) and any(f.name == name and f.metadata.get("path")
                                                  for f in dataclasses.fields(node))


def _set(cfg, dotted: str, value) -> None:
    parent, name = dotted.rpartition(".")[::2]
    setattr(_get(cfg, parent) if parent else cfg, name, value)


def _get(cfg, dotted: str):
    node = cfg
    for k in dotted.split("."):
        node = node[int(k)] if isinstance(node, list) else getattr(node, k)
    return node


def run_from_args(config: str, run_dir: str | None, overrides: list[str], resume: str | None,
                  init_from: str | None = None) -> Trainer:
    """Build a trainer the way ``launch/train.py`` does (config lookup, run dir, resume).

    The run directory defaults to ``runs/<config name>``, or to the folder of a run's own
    ``config.yaml`` given as ``--config``. A resumed run takes its settings from its
    checkpoint (``resume_config``), not from ``config``.
    """
    from gan.train.checkpoint import resolve_resume
    from gan.config import resolve_config_path

    path = resolve_config_path(config)
    if run_dir is None:
        own_run = path.name == "config.yaml" and (path.parent / "checkpoints").is_dir()
        run_dir = path.parent if own_run else Path("runs") / path.stem
    run_dir = Path(run_dir)
    checkpoint = resolve_resume(run_dir, resume)
    # said once the start goes ahead (a directory in use refuses it with its own line), of the folder as it was
    note = no_checkpoint_note(run_dir) if resume == "auto" and checkpoint is None else None
    if checkpoint is not None and (checkpoint / "config.yaml").is_file():
        cfg = resume_config(checkpoint, overrides)
    else:
        cfg = load_config(config, overrides)
    trainer = Trainer(cfg, run_dir, resume=checkpoint, init_from=Path(init_from) if init_from else None)
    if note is not None:
        log.warning(note)
    return trainer


def no_checkpoint_note(run_dir: Path) -> str:
    """One line for ``--resume auto`` in a run directory without a checkpoint: the run directories beside it that
    have one (a mistyped name starts a fresh run of the full length)."""
    what = "no checkpoint in" if run_dir.is_dir() else "no such folder as"
    parent = run_dir.parent
    runs = sorted(str(p) for p in parent.iterdir() if (p / "checkpoints" / "latest").is_file()) \
        if parent.is_dir() else []
    beside = f"run directories with checkpoints beside it: {', '.join(runs)}" if runs else \
        f"no run directory in {parent} holds one"
    return f"note: --resume auto: {what} {run_dir}, so this is a fresh start; {beside}"
