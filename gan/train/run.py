"""Starting a run the way ``launch/train.py`` does: config lookup, run directory, and resume with the
run's own settings (only mid-run changes allowed).

    trainer = run_from_args("cpu", None, ["trainer.max_steps=10"], resume="auto")
    trainer.train()
"""
from __future__ import annotations

from pathlib import Path

from gan.config import Config, ConfigError, load_config, to_dict
from gan.config.loader import RENAMED_KEYS
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

    Each change is said in one line; ``trainer.pretrain_steps`` may change while the step is
    below both values (the stage boundary has not been passed). Raises ``ConfigError``
    naming the key for any other change.
    """
    import yaml

    from gan.config import config_from_dict

    saved = config_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text()) or {})
    cfg = config_from_dict(to_dict(saved), overrides)
    step = int(checkpoint.name.rsplit("_", 1)[-1]) if checkpoint.name.startswith("step_") else 0
    for o in overrides:
        key = RENAMED_KEYS.get(o.split("=", 1)[0].strip(), o.split("=", 1)[0].strip())
        old, new = _get(saved, key), _get(cfg, key)
        if old == new:
            continue
        stage_ok = key == "trainer.pretrain_steps" and step < min(old, new)
        if key not in RESUMABLE and not stage_ok:
            raise ConfigError(f"--set {key}: cannot change when resuming at step {step} (it would rewrite the "
                              f"run's history: {old!r} -> {new!r}); start a new --run-dir instead")
        log.info("resume: %s %r -> %r", key, old, new)
    return cfg


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
    if checkpoint is not None and (checkpoint / "config.yaml").is_file():
        cfg = resume_config(checkpoint, overrides)
    else:
        cfg = load_config(config, overrides)
    return Trainer(cfg, run_dir, resume=checkpoint, init_from=Path(init_from) if init_from else None)
