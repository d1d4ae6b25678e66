"""When the trainer saves, what a checkpoint holds, and whether one can be resumed here.

A checkpoint directory (``gan.train.checkpoint`` names, commits and prunes them) holds
Accelerate's ``save_state`` files (weights, optimizer states, every rank's RNG states) and:

    trainer_state.pt   step, stage, schedules, EMA, non-finite counters, what validation logged,
                       the model and optimizer settings it was trained with, the code version
    generator.pt       inference weights (the EMA when on) + step
    config.yaml        the resolved config of the run

    ckpt = Checkpointer(run_dir, cfg.trainer, backend)
    save, stop = ckpt.due(step, stop=stop_requested)     # agreed by every rank
    if save: ckpt.save(step, trainer.state_dict(), generator, discriminator, cfg, ema=True)
    state = ckpt.load(path, cfg)            # after checking the models and optimizers match
    load_init_weights(g, d, "runs/other")   # fine-tuning: another run's weights, fresh optimizer
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import torch

from gan.config import Config, TrainerConfig, dump_config, to_dict
from gan.config.loader import RENAMED_DISCRIMINATORS
from gan.errors import first_line
from gan.log import get_logger
from gan.train.checkpoint import (CheckpointError, CheckpointManager, CheckpointWriteError, read_generator_file,
                                  read_safetensors, read_torch_file, resolve_resume, setup_writers, strip_wrapper_prefixes,
                                  write_failure)
from gan.train.gan_step import NonFiniteError

log = get_logger(__name__)


class Checkpointer:
    """The save policy (every ``save_every`` steps, every ``save_every_minutes``, on a stop signal, at the end)
    and the files of a checkpoint. Every rank constructs it and calls ``due``, ``save`` and ``load``; the main
    process writes, and so does each other machine's first process when that machine does not share the main
    process's run directory (``setup_writers``: every machine then holds the checkpoints to resume from).
    """

    def __init__(self, run_dir: str | Path, trainer_cfg: TrainerConfig, backend):
        self.cfg = trainer_cfg
        self.backend = backend
        self.files = CheckpointManager(run_dir, trainer_cfg.keep_last, trainer_cfg.keep_every)
        self.writes = setup_writers(backend.accelerator, run_dir)  # collective: every rank is here
        self.last_save = time.monotonic()

    def restart_clock(self) -> None:
        """Count ``save_every_minutes`` from now (a run's start or resumption)."""
        self.last_save = time.monotonic()

    def due(self, step: int, stop: bool) -> tuple[bool, bool]:
        """``(save now, stop now)`` after ``step`` steps, agreed by every rank (one all-reduce)."""
        timed = (time.monotonic() - self.last_save) / 60 >= self.cfg.save_every_minutes
        stop, timed = self.backend.any_true(stop, timed)
        return step % self.cfg.save_every == 0 or timed or stop or step == self.cfg.max_steps, stop

    def save(self, step: int, state: dict, generator: torch.nn.Module, discriminator: torch.nn.Module,
             cfg: Config, ema: bool) -> Path | None:
        """Write the checkpoint of ``step`` (every rank calls this); returns its directory where it was written.

        Raises ``NonFiniteError`` (nothing written) when G or D holds a non-finite weight, and
        ``CheckpointWriteError`` (one line, on every rank) when any rank cannot write its files
        (disk full, read-only, permissions, quota): the half-written folder is removed (or pruned
        by the next save) and ``latest`` still names the last complete checkpoint.
        """
        acc = self.backend.accelerator
        finite = all(torch.isfinite(p).all() for m in (generator, discriminator) for p in m.parameters())
        if not finite:
            raise NonFiniteError(f"step {step}: weights are not finite; refusing to write a checkpoint")
        tmp, final = self.files.tmp_dir(step), self.files.final_dir(step)
        existed = self.writes and final.exists()  # a resumed run passing a saved step again replaces it
        # each phase ends with every rank agreeing whether any rank failed (a barrier as well: the folder exists
        # before the ranks write into it, every rank's files are in before the commit)
        failed = self._agree(self._writing(lambda: self.files.begin(step)) if self.writes else None)
        if failed is None:
            failed = self._agree(self._writing(lambda: acc.save_state(str(tmp))))  # weights, optimizers, RNG states
        if failed is None:
            failed = self._agree(self._writing(lambda: self._finish(tmp, step, state, generator, cfg, ema))
                                 if self.writes else None)
        if failed is not None:
            if self.writes:  # what cannot be removed now, the next save prunes
                shutil.rmtree(tmp, ignore_errors=True)
                if not existed and final.exists():  # renamed into place, but ``latest`` was not moved to it
                    shutil.rmtree(final, ignore_errors=True)
            raise CheckpointWriteError(self._failure_message(step, failed))
        self.last_save = time.monotonic()
        return final if self.writes else None

    def _finish(self, tmp: Path, step: int, state: dict, generator: torch.nn.Module, cfg: Config, ema: bool) -> None:
        """The writer's own files, then the rename into place and ``latest``."""
        torch.save(state, tmp / "trainer_state.pt")
        torch.save({"state_dict": generator.state_dict(), "step": step, "ema": ema,
                    "train_seconds": state.get("train_seconds")}, tmp / "generator.pt")
        (tmp / "config.yaml").write_text(dump_config(cfg))
        self.files.commit(step)

    def _writing(self, write) -> str | None:
        """Run one writing phase on this rank: None, or why a file could not be written (other errors propagate)."""
        try:
            write()
        except Exception as e:  # noqa: BLE001 -- narrowed by write_failure
            reason = write_failure(e, self.files.dir)
            if reason is None:
                raise
            return reason
        return None

    def _agree(self, failure: str | None) -> str | None:
        """Whether any rank failed to write, agreed by every rank (one all-reduce; the reasons gathered only then)."""
        (any_failed,) = self.backend.any_true(failure is not None)
        if not any_failed or self.backend.accelerator.num_processes == 1:
            return failure
        from accelerate.utils import gather_object

        return next(f for f in gather_object([failure]) if f is not None)

    def _failure_message(self, step: int, reason: str) -> str:
        try:
            latest = self.files.latest()
        except CheckpointError:
            latest = None
        where = f"step {step}: the checkpoint could not be written to {self.files.dir} ({reason})"
        if latest is None:
            return f"{where}; there is no complete checkpoint yet: free space or fix the folder, then start again"
        return (f"{where}; the last complete checkpoint, {latest}, stands: free space or fix the folder, then "
                "continue with --resume auto")

    def load(self, path: str | Path, cfg: Config) -> dict:
        """Restore Accelerate's state from ``path``; returns the trainer state for the caller to load.

        Raises ``CheckpointError`` (one line) for an unreadable file, a checkpoint of other models,
        optimizers or backend, or weights that do not load.
        """
        path = Path(path)
        try:
            state = read_torch_file(path / "trainer_state.pt", trusted=True)
        except Exception as e:  # truncated, foreign or corrupt files all end here
            raise CheckpointError(f"checkpoint {path}: trainer_state.pt unreadable ({first_line(e)}); "
                                  "pick an older one") from None
        if not isinstance(state, dict) or not {"step", "model_config", "optimizers"} <= state.keys():
            raise CheckpointError(f"checkpoint {path}: trainer_state.pt is not an unshift trainer state")
        check_compatible(state, cfg, path)
        self.backend.check_resume(path)
        try:
            self.backend.accelerator.load_state(str(path))  # maps to this process's device (CPU on one process)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: cannot be loaded ({first_line(e)}); pick an older one") from None
        return state


def model_config(cfg: Config) -> dict:
    """The settings a checkpoint's weights and optimizer states depend on."""
    return {"generator": to_dict(cfg.generator), "discriminators": to_dict(cfg.discriminators)}


def _with_defaults(saved: dict, current) -> dict:
    """``saved`` (a model section as a checkpoint stored it) with every field of ``current``'s class that it
    lacks set to that field's default, also inside nested sections (``generator.band_gain``)."""
    out = dict(saved)
    for f in dataclasses.fields(current):
        if f.name in out:
            value = getattr(current, f.name)
            if dataclasses.is_dataclass(value) and isinstance(out[f.name], dict):
                out[f.name] = _with_defaults(out[f.name], value)
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default_factory())
    return out


def check_compatible(state: dict, cfg: Config, path: Path) -> None:
    """Refuse (``CheckpointError``) a trainer state whose models or optimizers differ from ``cfg``'s."""
    saved = dict(state["model_config"])
    saved["discriminators"] = [{**d, "name": RENAMED_DISCRIMINATORS.get(d["name"], d["name"])}
                               for d in saved["discriminators"]]  # names of an earlier version
    # fields added since the checkpoint was written take their defaults (a default keeps the old model)
    saved["generator"] = _with_defaults(saved["generator"], cfg.generator)
    saved["discriminators"] = [_with_defaults(d, c) if isinstance(d, dict) and d.get("name") == c.name else d
                               for d, c in zip(saved["discriminators"], cfg.discriminators)]
    for section, value in model_config(cfg).items():
        if saved[section] != value:
            raise CheckpointError(f"checkpoint {path}: was trained with a different {section} config; "
                                  "resume with the model settings of that run or start a new --run-dir")
    names = [cfg.optim.generator.name, cfg.optim.discriminator.name]
    if state["optimizers"] != names:
        raise CheckpointError(f"checkpoint {path}: optimizers {state['optimizers']} differ from the config's "
                              f"{names}; keep optim.*.name as in that run or start a new --run-dir")


# generator parts a config may add to a trained model when fine-tuning: they start as a fresh model's do
ADDABLE_PARTS = ("band_gain.condition.", "band_gain.detection.")


def load_init_weights(g: torch.nn.Module, d: torch.nn.Module, path: str | Path) -> None:
    """Load G (and D, when its weights are there) from a run or step directory of another run.

    Weights come from Accelerate's ``model.safetensors`` (G) and ``model_1.safetensors`` (D),
    else G from ``generator.pt`` and D stays fresh. Parts of ``ADDABLE_PARTS`` this config has and the
    other run had not (a conditioning or a classifier added for fine-tuning) start fresh, with a note.
    Raises ``CheckpointError`` when a network's weights do not fit its config here otherwise.
    """
    step = resolve_resume(path, str(path), option="--init-from")
    sources = [(g, "generator", step / "model.safetensors"), (d, "discriminator", step / "model_1.safetensors")]
    if not sources[0][2].is_file():
        sources = [(g, "generator", step / "generator.pt")]
    for net, name, file in sources:
        if not file.is_file():
            continue
        state = read_safetensors(file) if file.suffix == ".safetensors" else read_generator_file(file)["state_dict"]
        try:
            keys = net.load_state_dict(strip_wrapper_prefixes(state), strict=False)
        except RuntimeError as e:  # a tensor of another shape
            detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), first_line(e))
            raise CheckpointError(f"--init-from {path}: its {name} weights do not fit this config's {name} "
                                  f"({detail[:160]})") from None
        fresh = [k for k in keys.missing_keys if k.startswith(ADDABLE_PARTS)]
        misfits = [k for k in keys.missing_keys if k not in fresh] + list(keys.unexpected_keys)
        if misfits:
            raise CheckpointError(f"--init-from {path}: its {name} weights do not fit this config's {name} "
                                  f"({len(misfits)} missing or unexpected, e.g. {misfits[0]})")
        if fresh:
            parts = [part.rstrip(".") for part in ADDABLE_PARTS if any(k.startswith(part) for k in fresh)]
            log.info("new in this %s: %s, started fresh (not in %s)", name, " and ".join(parts), step)
    loaded = " and ".join(name for _, name, file in sources if file.is_file())
    log.info("initialised the %s from %s; optimizer and schedules start fresh", loaded, step)
