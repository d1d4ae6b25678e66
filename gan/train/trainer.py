"""The GAN trainer: builds a run from its config, then loops pretrain and adversarial steps.

    trainer = Trainer(load_config("demo"), "runs/demo")      # or gan.train.run.run_from_args(...)
    trainer.train()                                          # to trainer.max_steps, or a stop signal
    trainer.close()

One ``Trainer`` owns the generator G, the discriminator D (every configured family in one
``MultiDiscriminator``), their optimisers and schedules, the data stream and the run
directory. Its parts, each in its own module:

- ``backend``      plain Accelerate (two DDP wrappers) or DeepSpeed (two engines), one interface
- ``gan_step``     the D step and the G step of one optimisation step; the stage as a function of the step
- ``checkpointer`` when to save, what a checkpoint holds, whether one can be resumed
- ``validator``    the fixed validation crops, their scores, audio and spectrograms
- ``runlog``       scalars, audio and images through Accelerate's trackers
- ``lock``         one training per run directory (an OS lock held by the launch's main process)
- ``stopping``     SIGTERM / SIGINT: finish the step, save, exit 0; a second Ctrl-C changes nothing

The batch sequence, the learning rates and the stage are pure functions of the step, so
a resumed run continues exactly where it stopped (bit for bit on CPU).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from discriminators import build_discriminator
from gan.config import Config, dump_config
from gan.cpu import use_cpu_threads
from gan.data.loader import make_train_loader
from gan.data.preprocess import ensure_cache
from gan.errors import first_line
from gan.log import get_logger
from gan.losses.adversarial import AdversarialLoss
from gan.losses.reconstruction import GeneratorReconstruction
from gan.optim.params import build_optimizer, build_scheduler
from gan.train.backend import build_backend
from gan.train.checkpoint import CheckpointError, code_version
from gan.train.checkpointer import Checkpointer, load_init_weights, model_config
from gan.train.gan_step import ADVERSARIAL, GANStep, PhaseTimer, stage_at
from gan.train.lock import lock_run_dir
from gan.train.runlog import RunLogger, closing_line
from gan.train.stopping import StopSignals
from gan.train.validator import Validator
from generators import build_generator
from generators.layers import fuse_activations

log = get_logger(__name__)


class Trainer:
    """A training run. Every process of a launch builds one; they agree on every step.

    Args:
        cfg: the resolved run config.
        run_dir: where checkpoints, ``config.yaml`` and the tracker logs go.
        resume: a checkpoint directory to continue from (``gan.train.checkpoint.resolve_resume``).
        progress: show a progress bar (main process).
        init_from: fine-tuning: another run's weights; fresh optimizer and schedule.

    Raises:
        CheckpointError: ``run_dir`` already holds checkpoints and ``resume`` is None; an unusable checkpoint.
        ConfigError, CacheError: a bad config or training data (from building the cache).
        RunDirError: another training holds ``run_dir`` (``gan.train.lock``).
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: Path | None = None, progress: bool = True,
                 init_from: Path | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.backend = build_backend(cfg, self.run_dir)
        acc = self.accelerator = self.backend.accelerator
        self.is_main = acc.is_main_process
        self.run_lock = lock_run_dir(acc, self.run_dir)  # before any rank writes there: one history per run dir
        try:
            self._build(resume, progress, init_from)
        except BaseException:
            self._release_run_dir()
            raise

    def _build(self, resume: Path | None, progress: bool, init_from: Path | None) -> None:
        cfg, t, acc, run_dir = self.cfg, self.cfg.trainer, self.accelerator, self.run_dir
        use_cpu_threads(t.threads)  # on the CPU: the free cores only
        self.checkpointer = Checkpointer(self.run_dir, t, self.backend)
        if resume is None and self.checkpointer.files.steps():  # checked before any expensive work
            raise CheckpointError(f"run directory {run_dir} already holds checkpoints; continue it with "
                                  "--resume auto or start a new --run-dir")
        if init_from is not None and resume is not None:
            raise CheckpointError("--init-from starts a new run from other weights; it cannot be combined with --resume")
        self.progress = progress and self.is_main
        set_seed(t.seed)  # Python, NumPy and torch: identical initial weights on every rank, identical runs

        # data: the first process of each machine builds the cache (a lock makes a shared filesystem
        # build it once), the others wait for it
        self.cache_dir = ensure_cache(cfg.data, progress=self.progress) if acc.is_local_main_process else None
        acc.wait_for_everyone()
        self.cache_dir = self.cache_dir or Path(cfg.data.cache_dir)

        g, d = build_generator(cfg.generator), build_discriminator(cfg.discriminators)
        if t.compile_activations and can_compile(acc.device):
            fuse_activations(g)
        if init_from is not None:
            load_init_weights(g, d, init_from)
        opt_g, opt_d = build_optimizer(g, cfg.optim.generator), build_optimizer(d, cfg.optim.discriminator)
        self.G, self.D, self.opt_g, self.opt_d = self.backend.prepare(g, d, opt_g, opt_d)
        # G's schedule runs over every step; D's over the adversarial steps only.
        self.sched_g = build_scheduler(opt_g, cfg.optim.generator.scheduler, t.max_steps)
        self.sched_d = build_scheduler(opt_d, cfg.optim.discriminator.scheduler, max(1, t.max_steps - t.pretrain_steps))
        self.ema = None
        if t.ema_decay > 0:
            self.ema = AveragedModel(self._unwrap(self.G), multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay),
                                     use_buffers=True)
        self.reconstruction = GeneratorReconstruction(cfg.loss, cfg.loss_weights, cfg.data.sample_rate).to(acc.device)
        adversarial = AdversarialLoss(self.D, kind=cfg.loss.gan, names=self._unwrap(self.D).names)
        self.gan_step = GANStep(cfg, self.backend, self.G, self.D, self.opt_g, self.opt_d, self.sched_g, self.sched_d,
                                self.reconstruction, adversarial, self.ema)
        self.timer = PhaseTimer(acc.device)
        self.step = 0
        self.train_seconds = 0.0  # wall-clock seconds spent in train(), over every resumption
        self._clock = None  # (monotonic time, train_seconds) when train() started
        self._stop_step = 0
        state = self.checkpointer.load(resume, cfg) if resume is not None else None
        # on resume, TensorBoard drops what the interrupted run logged after its checkpoint (keeps the step's own)
        self.runlog = RunLogger(acc, "tb", cfg.data.sample_rate, purge_step=None if state is None else state["step"] + 1)
        self.validator = Validator(cfg, self.cache_dir, acc.device, self.runlog, enabled=self.is_main)
        if state is not None:
            try:
                self.load_state_dict(state)
            except (KeyError, RuntimeError, ValueError) as e:
                raise CheckpointError(f"checkpoint {resume}: cannot be loaded ({first_line(e)}); pick an older one") from None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        start = f"resumed from {resume} at step {self.step}" if resume is not None else "fresh start"
        log.info("%s; run directory %s; %s x %d process%s, %d threads each", start, self.run_dir, acc.device,
                 acc.num_processes, "es" if acc.num_processes > 1 else "", torch.get_num_threads())

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict:
        """The trainer's own state; Accelerate's ``save_state`` holds weights, optimizers and RNG states."""
        return {
            "step": self.step,
            "train_seconds": self.elapsed_seconds(),
            "stage": stage_at(self.step, self.cfg.trainer.pretrain_steps),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **self.gan_step.state_dict(),
            "val_references_logged": self.validator.references_logged,
            "model_config": model_config(self.cfg),
            "optimizers": [self.cfg.optim.generator.name, self.cfg.optim.discriminator.name],
            "code_version": code_version(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.train_seconds = state.get("train_seconds", 0.0)  # checkpoints written before it: unknown, 0
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.gan_step.load_state_dict(state)
        # checkpoints written before this key: a validation (which logs the references) ran by step val_every
        self.validator.references_logged = state.get("val_references_logged",
                                                     self.step >= self.cfg.trainer.val_every)

    def generator_for_inference(self) -> torch.nn.Module:
        """The EMA generator when EMA is on, else the trained one (unwrapped)."""
        return self.ema.module if self.ema is not None else self._unwrap(self.G)

    def save(self) -> Path | None:
        """Write a complete checkpoint of the current step (every rank must call this)."""
        return self.checkpointer.save(self.step, self.state_dict(), self.generator_for_inference(),
                                      self._unwrap(self.D), self.cfg, ema=self.ema is not None)

    def validate(self) -> dict[str, float]:
        """Score and log the validation crops at the current step (main process; ``{}`` elsewhere)."""
        return self.validator(self.generator_for_inference(), self.step)

    # ----------------------------------------------------------------- steps

    @property
    def samples_per_step(self) -> int:
        """Training examples in one optimisation step, over all processes."""
        return self.cfg.data.batch_size * self.cfg.trainer.grad_accum * self.accelerator.num_processes

    def next_micro_batches(self, batches) -> list[dict]:
        """The ``grad_accum`` micro-batches of one step, on the device (timed as ``data``)."""
        dev = self.accelerator.device
        with self.timer("data"):
            return [{k: v.to(dev, non_blocking=True) for k, v in next(batches).items()}
                    for _ in range(self.cfg.trainer.grad_accum)]

    def train_step(self, micro_batches: list[dict], stage: str | None = None) -> dict[str, float]:
        """One optimisation step of the current step's stage (``stage`` forces one); returns the scalars to log."""
        stage = stage or stage_at(self.step, self.cfg.trainer.pretrain_steps)
        return self.gan_step(micro_batches, adversarial=stage == ADVERSARIAL, step=self.step, timer=self.timer)

    # ----------------------------------------------------------------- loop

    def train(self) -> None:
        """Train to ``trainer.max_steps``: log, validate and save on schedule.

        SIGTERM / SIGINT (Ctrl-C) finish the step, save a complete checkpoint and return; further
        signals meanwhile print one line and change nothing, and stay ignored afterwards (the
        process is expected to exit: ``gan.train.stopping``).
        """
        t, acc = self.cfg.trainer, self.accelerator
        self.checkpointer.restart_clock()
        batches = iter(make_train_loader(self.cache_dir, self.cfg.data, acc.process_index, acc.num_processes,
                                         start_index=self.step * t.grad_accum))
        bar = self._progress_bar()
        window = _Window(self.timer)
        started, first_step = time.monotonic(), self.step
        self._clock = started, self.train_seconds
        signals = StopSignals(lambda: f"the checkpoint of step {self._stop_step} is being written")
        signals.install()  # before the loader's workers start: they inherit it until they ignore both signals
        self._stop_step = self.step + 1  # the step whose checkpoint a stop requested now ends with
        try:
            while self.step < t.max_steps:
                logs = self.train_step(self.next_micro_batches(batches))
                self.step += 1
                window.steps += 1
                if self.step % t.log_every == 0 or self.step == 1:
                    self.runlog.scalars({**logs, **window.throughput(self.samples_per_step, acc.device)}, self.step)
                    window = _Window(self.timer)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(stage=stage_at(self.step - 1, t.pretrain_steps)[:3],
                                    g=f"{logs['train/g/total']:.3f}", mel=f"{logs.get('train/g/mel', float('nan')):.3f}")
                if self.step % t.val_every == 0 or self.step == t.max_steps:  # a short run validates at its end
                    self.validate()
                save, stop = self.checkpointer.due(self.step, signals.requested)
                if not stop:
                    self._stop_step = self.step + 1
                if save:
                    self.save()
                if stop:
                    log.info("stopped by signal at step %d; resume with --resume auto", self.step)
                    break
        finally:
            batches.close()  # the loader's workers stop here, while a signal still only says "already stopping"
            signals.done()
            if bar is not None:
                bar.close()
            self.runlog.flush()
        if self.is_main:
            log.info(closing_line(first_step, self.step, t.max_steps, time.monotonic() - started,
                                  self.validator.last_line, self.checkpointer.files.latest(),
                                  self.run_dir / "tb" if "tensorboard" in t.log_with else None))

    def elapsed_seconds(self) -> float:
        """Wall-clock seconds of training up to now, over every resumption (for quality-against-time curves)."""
        if self._clock is None:
            return self.train_seconds
        return self._clock[1] + time.monotonic() - self._clock[0]

    def close(self) -> None:
        """End the trackers and the process group; let the next training start in the run directory."""
        try:
            self.accelerator.end_training()
        finally:
            self._release_run_dir()

    def _release_run_dir(self) -> None:
        if self.run_lock is not None:
            self.run_lock.release()

    # ----------------------------------------------------------------- helpers

    @property
    def timers(self) -> dict[str, float]:
        """Seconds per phase, summed since the run started (benchmarks clear it between stages)."""
        return self.timer.totals

    def _unwrap(self, model) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.trainer.max_steps, initial=self.step, dynamic_ncols=True)


def can_compile(device: torch.device) -> bool:
    """Whether inductor can compile here: on a CPU it needs a C++ compiler; without one, a note and False."""
    if device.type != "cpu" or any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return True
    log.warning("note: trainer.compile_activations: no C++ compiler found (inductor needs one on a CPU); "
                "the activations run uncompiled (install g++ to compile them)")
    return False


class _Window:
    """Steps and data-wait time since the last scalar log, for the ``perf/`` scalars."""

    def __init__(self, timer: PhaseTimer):
        self.timer, self.steps = timer, 0
        self.start, self.data_start = time.perf_counter(), timer.totals.get("data", 0.0)

    def throughput(self, samples_per_step: int, device: torch.device) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        steps = max(self.steps, 1)
        return {"perf/steps_per_s": steps / elapsed, "perf/samples_per_s": steps * samples_per_step / elapsed,
                "perf/data_wait_fraction": (self.timer.totals.get("data", 0.0) - self.data_start) / elapsed,
                "perf/peak_memory_mb": peak_memory_mb(device)}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocations, or the resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["Trainer", "peak_memory_mb"]
