"""One optimisation step of the GAN: the discriminator step, then the generator step.

- pretrain stage (``step < trainer.pretrain_steps``): G trains on the reconstruction terms
  (mel, L1, MR-STFT, LSD); D is neither run nor stepped.
- adversarial stage: one D step on ``(G(x).detach(), clean)``, then one G step on
  reconstruction + feature matching + adversarial terms with D frozen (audiocraft's
  ``AdversarialLoss`` pattern, ``gan.losses.adversarial``).

The stage is a pure function of the step (``stage_at``). On the plain backend a step whose
loss or gradient norm is non-finite on any rank is skipped on every rank; under DeepSpeed the
engine skips a step whose global gradient norm is non-finite (a non-finite loss alone is
counted, not skipped). ``trainer.max_nonfinite_skips`` non-finite steps in a row raise
``NonFiniteError``. Schedules advance on skipped steps too, so the learning rate stays a
function of the step.

    step = GANStep(cfg, backend, G, D, opt_g, opt_d, sched_g, sched_d, reconstruction, adversarial, ema)
    logs = step(micro_batches, adversarial=True, step=1200)   # {"train/g/mel": ..., "train/d/mpd_2": ...}
"""
from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager, nullcontext

import torch

from gan.errors import UnshiftError
from gan.losses.detection import DetectionLoss
from generators.condition import conditioned
from generators.detection import detecting

PRETRAIN, ADVERSARIAL = "pretrain", "adversarial"


def stage_at(step: int, pretrain_steps: int) -> str:
    """The training stage of 0-based ``step``: generator-only pretraining, then adversarial."""
    return PRETRAIN if step < pretrain_steps else ADVERSARIAL


class NonFiniteError(UnshiftError, RuntimeError):
    """Training produced non-finite losses or gradients too many steps in a row."""

    exit_code = 1  # the run did work, then stopped; its last checkpoint is intact


class PhaseTimer:
    """Seconds spent per named phase (``data``, ``d_fwd_bwd``, ``g_fwd_bwd``, ``optimizer``), summed.

    On CUDA each phase ends with a synchronisation, so its time is the device's.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0


class GANStep:
    """The D step and the G step of one optimisation step over ``grad_accum`` micro-batches.

    Holds the non-finite counters (``state_dict``), nothing else of the run.
    """

    def __init__(self, cfg, backend, G, D, opt_g, opt_d, sched_g, sched_d, reconstruction, adversarial, ema=None):
        self.cfg, self.backend = cfg, backend
        self.G, self.D, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.sched_g, self.sched_d = sched_g, sched_d
        self.reconstruction, self.adversarial, self.ema = reconstruction, adversarial, ema
        self.nonfinite = {"g": 0, "d": 0}  # consecutive skipped steps per network
        self.skipped_total = {"g": 0, "d": 0}
        self.conditioned = conditioned(cfg.generator)  # G reads family and shift
        self.detection = DetectionLoss() if detecting(cfg.generator) else None  # G also classifies its input

    def state_dict(self) -> dict:
        return {"nonfinite": dict(self.nonfinite), "skipped_total": dict(self.skipped_total)}

    def load_state_dict(self, state: dict) -> None:
        self.nonfinite = dict(state["nonfinite"])
        self.skipped_total = dict(state["skipped_total"])

    def __call__(self, micro_batches: list[dict], adversarial: bool, step: int,
                 timer: PhaseTimer | None = None) -> dict[str, float]:
        """Run one step; returns the scalars to log (each the mean over the micro-batches).

        ``micro_batches``: dicts with ``degraded`` and ``clean`` of shape ``(B, 1, T)`` on the device, and
        for a G that reads or predicts them (``generator.band_gain.condition``, ``detect``) ``family`` and
        ``shift`` ``(B,)`` int64.
        """
        timer = timer or (lambda name: nullcontext())
        logs: dict[str, float] = {}
        fakes = [None] * len(micro_batches)
        if adversarial:
            with timer("d_fwd_bwd"):
                fakes = self._discriminator_backward(micro_batches, logs)
            with timer("optimizer"):
                logs["train/grad_norm/d"] = self._clip_and_step("d", logs["train/d/total"], step)
                logs["train/lr/d"] = self.opt_d.param_groups[0]["lr"]
                _advance(self.sched_d)
        with timer("g_fwd_bwd"):
            self._generator_backward(micro_batches, fakes, adversarial, logs)
        with timer("optimizer"):
            logs["train/grad_norm/g"] = self._clip_and_step("g", logs["train/g/total"], step)
            logs["train/lr/g"] = self.opt_g.param_groups[0]["lr"]
            _advance(self.sched_g)
            if self.ema is not None:
                self.ema.update_parameters(self.backend.accelerator.unwrap_model(self.G, keep_torch_compile=False))
        logs.setdefault("train/lr/d", self.opt_d.param_groups[0]["lr"])  # pretraining: D's schedule has not moved
        logs["train/stage"] = float(adversarial)
        logs["train/skipped/g"] = self.skipped_total["g"]
        logs["train/skipped/d"] = self.skipped_total["d"]
        return logs

    def _discriminator_backward(self, micro_batches: list[dict], logs: dict) -> list:
        """D's loss and gradients on every micro-batch; with one micro-batch, G's output is kept for the G step."""
        b, k = self.backend, len(micro_batches)
        fakes = [None] * k
        for i, mb in enumerate(micro_batches):
            with b.autocast():
                if k == 1:
                    fakes[i] = self._generate(mb)  # (B, 1, T) and the logits, reused by the G step
                    fake = fakes[i][0]
                else:  # with accumulation, fakes come from no-grad G passes
                    with torch.no_grad():
                        fake = self._generate(mb)[0]
            with b.no_sync(self.D, i < k - 1):
                with b.autocast():
                    d_loss, d_terms = self.adversarial.discriminator_loss(fake.detach(), mb["clean"])
                b.backward(self.D, d_loss / k, last=i == k - 1)
            _accumulate(logs, "train/d", {**d_terms, "total": d_loss}, k)
        return fakes

    def _generator_backward(self, micro_batches: list[dict], fakes: list, adversarial: bool, logs: dict) -> None:
        b, k, w = self.backend, len(micro_batches), self.cfg.loss_weights
        for i, mb in enumerate(micro_batches):
            with b.no_sync(self.G, i < k - 1):
                with b.autocast():
                    fake, logits = fakes[i] if fakes[i] is not None else self._generate(mb)
                    loss, terms = self.reconstruction(fake, mb["clean"])
                    if logits is not None:
                        detect = self.detection(logits, mb["family"], mb["degraded"])
                        loss = loss + w.detect * detect
                        terms = {**terms, "detect": detect.detach()}
                    if adversarial and (w.adv or w.feat):
                        adv_terms = self.adversarial.generator_losses(fake, mb["clean"], feature_matching=w.feat > 0)
                        loss = loss + w.adv * adv_terms["adv"] + w.feat * adv_terms["feat"]
                        terms = {**terms, **adv_terms}
                b.backward(self.G, loss / k, last=i == k - 1)
            _accumulate(logs, "train/g", {**terms, "total": loss}, k)

    def _generate(self, mb: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """G on a micro-batch's input -> ``(B, 1, T)`` and the classifier's logits ``(B, L, F)`` (None without
        one); a conditioned G is told each crop's shifter family and shift."""
        labels = (mb["family"], mb["shift"]) if self.conditioned else ()
        if self.detection is not None:
            return self.G(mb["degraded"], *labels, classify=True)
        return self.G(mb["degraded"], *labels), None

    def _clip_and_step(self, net: str, loss: float, step: int) -> float:
        """Clip and step one network, counting skipped steps; returns its gradient norm."""
        model, opt = (self.G, self.opt_g) if net == "g" else (self.D, self.opt_d)
        clip = (self.cfg.optim.generator if net == "g" else self.cfg.optim.discriminator).grad_clip
        norm, stepped, finite = self.backend.clip_and_step(model, opt, clip, loss_finite=math.isfinite(loss))
        self.nonfinite[net] = 0 if finite else self.nonfinite[net] + 1
        self.skipped_total[net] += 0 if stepped else 1
        if self.nonfinite[net] >= self.cfg.trainer.max_nonfinite_skips:
            raise NonFiniteError(
                f"step {step}: {net.upper()} loss or gradients non-finite for {self.nonfinite[net]} steps "
                "in a row; lower the learning rate or check the data (last checkpoint is intact)"
            )
        return norm


def _accumulate(logs: dict, prefix: str, terms: dict, k: int) -> None:
    """Add each term's mean over ``k`` micro-batches to ``logs[prefix/name]``."""
    for name, v in terms.items():
        v = float(v.detach()) if torch.is_tensor(v) else float(v)
        logs[f"{prefix}/{name}"] = logs.get(f"{prefix}/{name}", 0.0) + v / k


def _advance(scheduler) -> None:
    """Step a schedule, also after a skipped optimizer step (torch would warn that the optimizer did not step)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        scheduler.step()
