"""The GAN trainer: warmup stage, adversarial stage, validation, checkpoints, preemption.

One ``Trainer`` owns the generator G, the discriminator D, their optimisers and
schedulers, the data stream and the run directory. Accelerate prepares G and D
separately (two DDP wrappers). Per step:

- warmup stage (``step < trainer.warmup_steps``): G trains on the reconstruction
  terms (mel, L1, MR-STFT); D is neither run nor stepped.
- adversarial stage: one D step on ``(G(x).detach(), clean)``, then one G step on
  reconstruction + feature matching + adversarial terms with D frozen.

The batch sequence, the learning rates and the stage are pure functions of the
step, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch

if not torch.cuda.is_available():  # DeepSpeed's accelerator detection would warn on every CPU run
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from discriminators import build_discriminator
from generators import build_generator

from gan.train import ds
from gan.losses.adversarial import AdversarialLoss
from gan.data.preprocess import ensure_cache
from gan.train.checkpoint import CheckpointError, CheckpointManager, code_version
from gan.config import Config, dump_config, to_dict
from gan.data.loader import load_val_set, make_train_loader
from gan.errors import UnshiftError, first_line
from gan.losses.reconstruction import GeneratorReconstruction, MultiScaleMelLoss, si_sdr
from gan.optim.params import build_optimizer, build_scheduler
from gan.train.runlog import RunLogger

WARMUP, ADVERSARIAL = "warmup", "adversarial"


def stage_at(step: int, warmup_steps: int) -> str:
    """The training stage of 0-based ``step``: generator-only warmup, then adversarial."""
    return WARMUP if step < warmup_steps else ADVERSARIAL


class NonFiniteError(UnshiftError, RuntimeError):
    exit_code = 1  # the run did work, then stopped; its last checkpoint is intact
    """Training produced non-finite losses or gradients too many steps in a row."""


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: Path | None = None,
                 accelerator: Accelerator | None = None, progress: bool = True, init_from: Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        t = cfg.trainer
        self.engines = None  # the DeepSpeed side (gan/train/ds.py) when launched with a DeepSpeed config
        if accelerator is None and ds.deepspeed_requested():
            accelerator = Accelerator(**ds.accelerator_kwargs(cfg))  # refuses Muon, ZeRO-3, offload
            self.engines = ds.Engines(accelerator, t.mixed_precision)
        self.accelerator = accelerator or Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=t.mixed_precision,
            dynamo_backend="inductor" if t.compile else "no",
            # On CPU, DDP keeps its first gradient buckets (find_unused_parameters turns the rebuild after the
            # first step off): gloo sums a bucket in chunks, so a resumed run must bucket like an unbroken one
            # to add the same gradients in the same order (bit-exact resume with 3+ processes)
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False,
                                                           find_unused_parameters=not torch.cuda.is_available())],
        )
        acc = self.accelerator
        self.is_main = acc.is_main_process
        if acc.device.type == "cpu":
            from gan.train.run import cpu_threads

            torch.set_num_threads(cpu_threads(t.threads))
        if resume is None and CheckpointManager(run_dir).steps():  # checked before any expensive work
            raise CheckpointError(f"run directory {run_dir} already holds checkpoints; continue it with "
                                  "--resume auto or start a new --run-dir")
        self.progress = progress and self.is_main
        set_seed(t.seed)  # Python, NumPy and torch: identical initial weights on every rank, identical runs

        # data: the first process of each machine builds the cache (a lock makes a shared filesystem
        # build it once), the others wait for it
        self.cache_dir = ensure_cache(cfg.data, progress=self.progress) if acc.is_local_main_process else None
        acc.wait_for_everyone()
        if self.cache_dir is None:
            self.cache_dir = Path(cfg.data.cache_dir)  # built by this machine's first process

        g = build_generator(cfg.generator)
        d = build_discriminator(cfg.discriminators)
        if init_from is not None:  # fine-tuning: another run's weights, this run's fresh optimizer and schedule
            if resume is not None:
                raise CheckpointError("--init-from starts a new run from other weights; it cannot be combined "
                                      "with --resume")
            from gan.train.run import load_init_weights

            load_init_weights(g, d, init_from, say=print if self.is_main else (lambda m: None))
        opt_g = build_optimizer(g, cfg.optim.generator)
        opt_d = build_optimizer(d, cfg.optim.discriminator)
        if self.engines is not None:  # two engines: Accelerate keeps one engine per prepare call
            self.G, self.D, self.opt_g, self.opt_d = self.engines.prepare(g, d, opt_g, opt_d)
        else:
            self.G, self.D, self.opt_g, self.opt_d = acc.prepare(g, d, opt_g, opt_d)
        # G's schedule runs over every step; D's over the adversarial steps only.
        self.sched_g = build_scheduler(opt_g, cfg.optim.generator.scheduler, t.max_steps)
        self.sched_d = build_scheduler(opt_d, cfg.optim.discriminator.scheduler, max(1, t.max_steps - t.warmup_steps))
        self.ema = None
        if t.ema_decay > 0:
            self.ema = AveragedModel(acc.unwrap_model(self.G, keep_torch_compile=False), multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay),
                                     use_buffers=True)

        device = acc.device
        self.reconstruction = GeneratorReconstruction(cfg.loss, cfg.loss_weights, cfg.data.sample_rate).to(device)
        self.adversarial = AdversarialLoss(self.D, kind=cfg.loss.gan, names=acc.unwrap_model(self.D, keep_torch_compile=False).names)
        self.val_mel = MultiScaleMelLoss(cfg.loss.mel, cfg.data.sample_rate).to(device)

        self.step = 0
        self.nonfinite = {"g": 0, "d": 0}  # consecutive skipped steps per network
        self.skipped_total = {"g": 0, "d": 0}
        self.ckpt = CheckpointManager(self.run_dir, t.keep_last, t.keep_every)
        self._stop_requested = False
        self._logged_references = False
        self._val_set: dict[str, torch.Tensor] | None = None  # loaded on first use (main process)
        self._last_save_time = time.monotonic()
        self.timers: dict[str, float] = {}
        if resume is not None:
            self.load(resume)
        # on resume, TensorBoard drops what the interrupted run logged after its checkpoint
        self.log = RunLogger(self.run_dir / "tb", enabled=self.is_main, sample_rate=cfg.data.sample_rate,
                             purge_step=self.step + 1 if resume is not None else None)  # keeps the checkpoint step's own logs
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
            start = f"resumed from {resume} at step {self.step}" if resume is not None else "fresh start"
            print(f"{start}; run directory {self.run_dir}; {acc.device} x {acc.num_processes} process"
                  f"{'es' if acc.num_processes > 1 else ''}, {torch.get_num_threads()} threads each", flush=True)

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "stage": stage_at(self.step, self.cfg.trainer.warmup_steps),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "nonfinite": dict(self.nonfinite),
            "skipped_total": dict(self.skipped_total),
            "val_references_logged": self._logged_references,
            "model_config": {"generator": to_dict(self.cfg.generator),
                             "discriminators": to_dict(self.cfg.discriminators)},
            "optimizers": [self.cfg.optim.generator.name, self.cfg.optim.discriminator.name],
            "code_version": code_version(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.nonfinite = dict(state["nonfinite"])
        self.skipped_total = dict(state["skipped_total"])
        # checkpoints written before this key: a validation (which logs the references) ran by step val_every
        self._logged_references = state.get("val_references_logged", self.step >= self.cfg.trainer.val_every)

    def _check_compatible(self, state: dict, path: Path) -> None:
        mine = {"generator": to_dict(self.cfg.generator), "discriminators": to_dict(self.cfg.discriminators)}
        for section, value in mine.items():
            if state["model_config"][section] != value:
                raise CheckpointError(
                    f"checkpoint {path}: was trained with a different {section} config; "
                    "resume with the model settings of that run or start a new --run-dir"
                )
        names = [self.cfg.optim.generator.name, self.cfg.optim.discriminator.name]
        if state["optimizers"] != names:
            raise CheckpointError(
                f"checkpoint {path}: optimizers {state['optimizers']} differ from the config's {names}; "
                "keep optim.*.name as in that run or start a new --run-dir"
            )

    def load(self, path: Path) -> None:
        path = Path(path)
        try:
            state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
        except Exception as e:  # truncated, foreign or corrupt files all end here
            raise CheckpointError(f"checkpoint {path}: trainer_state.pt unreadable ({first_line(e)}); "
                                  "pick an older one") from None
        if not isinstance(state, dict) or not {"step", "model_config", "optimizers"} <= state.keys():
            raise CheckpointError(f"checkpoint {path}: trainer_state.pt is not an unshift trainer state")
        self._check_compatible(state, path)
        ds.check_resume(path, self.engines is not None, self.accelerator.num_processes)
        try:
            self.accelerator.load_state(str(path))
            self.load_state_dict(state)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: cannot be loaded ({first_line(e)}); pick an older one") from None

    def generator_for_inference(self) -> torch.nn.Module:
        """The EMA generator when EMA is on, else the trained one (unwrapped)."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.G, keep_torch_compile=False)

    def save(self) -> Path | None:
        """Write a complete checkpoint of the current step (every rank must call this)."""
        acc = self.accelerator
        gen = self.generator_for_inference()
        finite = all(torch.isfinite(p).all() for p in gen.parameters())
        finite &= all(torch.isfinite(p).all() for p in acc.unwrap_model(self.D, keep_torch_compile=False).parameters())
        if not finite:
            raise NonFiniteError(f"step {self.step}: weights are not finite; refusing to write a checkpoint")
        tmp = self.ckpt.begin(self.step) if self.is_main else self.ckpt.tmp_dir(self.step)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every rank's files (RNG states, shards) are in before the commit
        final = None
        if self.is_main:
            torch.save(self.state_dict(), tmp / "trainer_state.pt")
            torch.save({"state_dict": gen.state_dict(), "step": self.step, "ema": self.ema is not None},
                       tmp / "generator.pt")
            (tmp / "config.yaml").write_text(dump_config(self.cfg))
            final = self.ckpt.commit(self.step)
        acc.wait_for_everyone()
        self._last_save_time = time.monotonic()
        return final

    # ----------------------------------------------------------------- one step

    def _timed(self, name: str, t0: float) -> float:
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.timers[name] = self.timers.get(name, 0.0) + now - t0
        return now

    @property
    def samples_per_step(self) -> int:
        """Training examples in one optimisation step, over all processes."""
        return self.cfg.data.batch_size * self.cfg.trainer.grad_accum * self.accelerator.num_processes

    def next_micro_batches(self, batches) -> list[dict]:
        """The ``grad_accum`` micro-batches of one step, on the device (time counted as ``data``)."""
        t0 = time.perf_counter()
        dev = self.accelerator.device
        micro = [{k: v.to(dev, non_blocking=True) for k, v in next(batches).items()}
                 for _ in range(self.cfg.trainer.grad_accum)]
        self._timed("data", t0)
        return micro

    def _optimizer_step(self, net: str, loss: torch.Tensor) -> tuple[float, bool]:
        """Clip, check finiteness and step one network. Returns (grad norm, stepped)."""
        model, opt = (self.G, self.opt_g) if net == "g" else (self.D, self.opt_d)
        clip = (self.cfg.optim.generator if net == "g" else self.cfg.optim.discriminator).grad_clip
        if self.engines is not None:  # the engine clips, steps unless its grad norm is non-finite, zeroes grads
            norm = self.engines.step(model)
            stepped = math.isfinite(norm)
            (finite,) = self._agree_all(stepped and math.isfinite(float(loss)))
        else:
            norm = float(self.accelerator.clip_grad_norm_(model.parameters(), clip if clip is not None else math.inf))
            # the loss is this rank's own: agree, so every rank steps (and runs Muon's collectives) or none does
            (finite,) = self._agree_all(math.isfinite(norm) and math.isfinite(float(loss)))
            stepped = finite
            if stepped:
                opt.step()
            opt.zero_grad(set_to_none=True)
        self.nonfinite[net] = 0 if finite else self.nonfinite[net] + 1
        self.skipped_total[net] += 0 if stepped else 1
        if self.nonfinite[net] >= self.cfg.trainer.max_nonfinite_skips:
            raise NonFiniteError(
                f"step {self.step}: {net.upper()} loss or gradients non-finite for {self.nonfinite[net]} steps "
                "in a row; lower the learning rate or check the data (last checkpoint is intact)"
            )
        return norm, stepped

    def _autocast(self):
        return self.engines.autocast() if self.engines is not None else self.accelerator.autocast()

    def _no_sync(self, model, skip_sync: bool):
        """DDP's no_sync on all but the last micro-batch; DeepSpeed uses accumulation boundaries instead."""
        return self.accelerator.no_sync(model) if skip_sync and self.engines is None else nullcontext()

    def _backward(self, model, loss: torch.Tensor, last: bool) -> None:
        if self.engines is not None:
            self.engines.backward(model, loss, last)
        else:
            self.accelerator.backward(loss)

    def train_step(self, micro_batches: list[dict], stage: str | None = None) -> dict[str, float]:
        """One optimisation step over ``grad_accum`` micro-batches; returns the scalars to log.

        ``stage`` defaults to the stage of the current step (benchmarks force one).
        """
        acc, cfg = self.accelerator, self.cfg
        adversarial = (stage or stage_at(self.step, cfg.trainer.warmup_steps)) == ADVERSARIAL
        k = len(micro_batches)
        logs: dict[str, float] = {}

        def add(prefix, terms):
            for name, v in terms.items():
                logs[f"{prefix}/{name}"] = logs.get(f"{prefix}/{name}", 0.0) + float(v.detach() if torch.is_tensor(v) else v) / k

        fakes = [None] * k
        t0 = time.perf_counter()
        if adversarial:  # D step; with accumulation, fakes come from no-grad G passes
            for i, mb in enumerate(micro_batches):
                with self._autocast():
                    if k == 1:
                        fakes[i] = self.G(mb["degraded"])
                        fake = fakes[i]
                    else:
                        with torch.no_grad():
                            fake = self.G(mb["degraded"])
                with self._no_sync(self.D, i < k - 1):
                    with self._autocast():
                        d_loss, d_terms = self.adversarial.discriminator_loss(fake.detach(), mb["clean"])
                    self._backward(self.D, d_loss / k, last=i == k - 1)
                add("train/d", d_terms)
                logs["train/d/total"] = logs.get("train/d/total", 0.0) + float(d_loss.detach()) / k
            t0 = self._timed("d_fwd_bwd", t0)
            logs["train/grad_norm/d"], _ = self._optimizer_step("d", torch.tensor(logs["train/d/total"]))
            logs["train/lr/d"] = self.opt_d.param_groups[0]["lr"]
            self.sched_d.step()
            t0 = self._timed("optimizer", t0)

        w = cfg.loss_weights
        g_total = 0.0
        for i, mb in enumerate(micro_batches):
            with self._no_sync(self.G, i < k - 1):
                with self._autocast():
                    fake = fakes[i] if fakes[i] is not None else self.G(mb["degraded"])
                    loss, terms = self.reconstruction(fake, mb["clean"])
                    if adversarial and (w.adv or w.feat):
                        adv_terms = self.adversarial.generator_losses(fake, mb["clean"], feature_matching=w.feat > 0)
                        loss = loss + w.adv * adv_terms["adv"] + w.feat * adv_terms["feat"]
                        terms = {**terms, **adv_terms}
                self._backward(self.G, loss / k, last=i == k - 1)
            add("train/g", terms)
            g_total += float(loss.detach()) / k
        logs["train/g/total"] = g_total
        t0 = self._timed("g_fwd_bwd", t0)
        logs["train/grad_norm/g"], _ = self._optimizer_step("g", torch.tensor(g_total))
        logs["train/lr/g"] = self.opt_g.param_groups[0]["lr"]
        self.sched_g.step()
        if self.ema is not None:
            self.ema.update_parameters(acc.unwrap_model(self.G, keep_torch_compile=False))
        self._timed("optimizer", t0)
        logs.setdefault("train/lr/d", self.opt_d.param_groups[0]["lr"])  # warmup: D's schedule has not moved
        logs["train/stage"] = float(adversarial)
        logs["train/skipped/g"] = self.skipped_total["g"]
        logs["train/skipped/d"] = self.skipped_total["d"]
        return logs

    # ----------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mel distance and SI-SDR improvement on the fixed validation crops (main process)."""
        if not self.is_main:
            return {}
        if self._val_set is None:
            self._val_set = load_val_set(self.cache_dir, self.cfg.data)
        if len(self._val_set["degraded"]) == 0:
            return {}
        g = self.generator_for_inference()
        was_training = g.training
        g.eval()
        dev = self.accelerator.device
        val = self._val_set
        enhanced = torch.cat([g(val["degraded"][i:i + 1].to(dev)) for i in range(len(val["degraded"]))]).float()
        g.train(was_training)
        clean, degraded = val["clean"].to(dev), val["degraded"].to(dev)
        mel_enh = float(self.val_mel(enhanced, clean))
        mel_deg = float(self.val_mel(degraded, clean))
        sdr_enh = si_sdr(enhanced, clean)
        sdr_deg = si_sdr(degraded, clean)
        out = {
            "val/mel_distance": mel_enh,
            "val/mel_distance_degraded": mel_deg,
            "val/mel_improvement": mel_deg - mel_enh,
            "val/si_sdr": float(sdr_enh.mean()),
            "val/si_sdr_improvement": float((sdr_enh - sdr_deg).mean()),
        }
        self.log.scalars(out, self.step)
        n_audio = min(4, len(enhanced))
        for i in range(n_audio):
            if not self._logged_references:
                self.log.audio(f"audio/{i}/degraded", val["degraded"][i], 0)
                self.log.audio(f"audio/{i}/clean", val["clean"][i], 0)
            self.log.audio(f"audio/{i}/enhanced", enhanced[i].cpu(), self.step)
            self.log.spectrograms(f"spec/{i}", {"degraded": val["degraded"][i], "enhanced": enhanced[i].cpu(),
                                                "clean": val["clean"][i]}, self.step)
        self._logged_references = True
        self.log.flush()
        return out

    # ----------------------------------------------------------------- loop

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _agree_all(self, *flags: bool) -> list[bool]:
        """Agree across ranks (one all-reduce): each flag is true only when every rank says so."""
        return [not f for f in self._agree(*(not f for f in flags))]

    def _agree(self, *flags: bool) -> list[bool]:
        """Agree across ranks (one all-reduce): each flag is true when any rank says so."""
        if self.accelerator.num_processes == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.accelerator.device)
        return [bool(v > 0) for v in self.accelerator.reduce(t, reduction="sum").tolist()]

    def train(self) -> None:
        cfg, t, acc = self.cfg, self.cfg.trainer, self.accelerator
        old = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        self._last_save_time = time.monotonic()
        loader = make_train_loader(self.cache_dir, cfg.data, acc.process_index, acc.num_processes,
                                   start_index=self.step * t.grad_accum)
        batches = iter(loader)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=t.max_steps, initial=self.step, dynamic_ncols=True)
        window = {"data": 0.0, "start": time.perf_counter(), "steps": 0}
        try:
            while self.step < t.max_steps:
                t0 = time.perf_counter()
                micro = self.next_micro_batches(batches)
                window["data"] += time.perf_counter() - t0
                logs = self.train_step(micro)
                self.step += 1
                window["steps"] += 1
                if self.step % t.log_every == 0 or self.step == 1:
                    self._log_throughput(logs, window)
                    self.log.scalars(logs, self.step)
                    window = {"data": 0.0, "start": time.perf_counter(), "steps": 0}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(stage=stage_at(self.step - 1, t.warmup_steps)[:3],
                                    g=f"{logs['train/g/total']:.3f}",
                                    mel=f"{logs.get('train/g/mel', float('nan')):.3f}")
                if self.step % t.val_every == 0 or self.step == t.max_steps:  # a short run validates at its end
                    self.validate()
                timed = (time.monotonic() - self._last_save_time) / 60 >= t.save_every_minutes
                stop, timed = self._agree(self._stop_requested, timed)
                if self.step % t.save_every == 0 or timed or stop or self.step == t.max_steps:
                    self.save()
                if stop:
                    if self.is_main:
                        print(f"stopped by signal at step {self.step}; resume with --resume auto", flush=True)
                    break
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
            self.log.flush()

    def _log_throughput(self, logs: dict, window: dict) -> None:
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        steps = max(window["steps"], 1)
        logs["perf/steps_per_s"] = steps / elapsed
        logs["perf/samples_per_s"] = steps * self.samples_per_step / elapsed
        logs["perf/data_wait_fraction"] = window["data"] / elapsed
        logs["perf/peak_memory_mb"] = peak_memory_mb(self.accelerator.device)

    def close(self) -> None:
        self.log.close()
        self.accelerator.end_training()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["Trainer", "stage_at", "WARMUP", "ADVERSARIAL", "NonFiniteError"]
