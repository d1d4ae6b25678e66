"""The run configuration's schema: one dataclass per YAML section, field comments with units.

``__post_init__`` methods raise ``ConfigError`` for cross-field rules; ``gan.config.loader``
turns YAML and ``--set`` overrides into these classes.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from gan.errors import UnshiftError


class ConfigError(UnshiftError, ValueError):
    """A user-facing configuration error; the message names the dotted key."""


# --------------------------------------------------------------------------- sections


@dataclass
class DegradeConfig:
    """The pitch round trip: 48 kHz -> oversample -> shift +n -> shift -n -> back."""

    shifts: list[int] = field(default_factory=lambda: [-12, -11, -10, 10, 11, 12])  # semitones drawn from
    # degraded versions stored per piece: 0 -> one per entry of ``shifts`` (every shift of every piece);
    # k > 0 -> k distinct shifts drawn per piece (cache size (1 + k) x the audio, whatever the range)
    variants: int = 0
    # shifter name -> sampling weight; each (piece, shift) pair draws one shifter.
    shifters: dict[str, float] = field(default_factory=lambda: {"torchaudio": 1.0})
    oversample_rate: int = 96000
    n_fft: int = 2048  # torchaudio phase vocoder, at the oversampled rate
    hop_length: Optional[int] = None  # None -> n_fft // 4
    seed: int = 0

    def __post_init__(self):
        if not self.shifts:
            raise ConfigError("data.degrade.shifts: needs at least one shift")
        if any(abs(s) > 24 or s == 0 for s in self.shifts) or len(set(self.shifts)) != len(self.shifts):
            raise ConfigError("data.degrade.shifts: distinct non-zero shifts within +-24 semitones")
        if not 0 <= self.variants <= len(self.shifts):
            raise ConfigError(f"data.degrade.variants: {self.variants} must be in [0, {len(self.shifts)}] "
                              "(0 = one per shift)")
        if not self.shifters or any(w < 0 for w in self.shifters.values()) or sum(self.shifters.values()) <= 0:
            raise ConfigError("data.degrade.shifters: needs at least one shifter with a positive weight")
        if self.oversample_rate < 48000:
            raise ConfigError("data.degrade.oversample_rate: must be at least the 48000 Hz model rate")


@dataclass
class DataConfig:
    # paths (``metadata["path"]``): a resumed run compares them as paths, so /music/ is /music
    audio_dir: str = field(metadata={"path": True})  # folder of recordings, searched recursively
    cache_dir: str = field(metadata={"path": True})  # where preprocess writes the memmap cache
    sample_rate: int = 48000
    segment_length: int = 16384  # training crop, samples
    batch_size: int = 16  # per process
    num_workers: int = 2
    val_fraction: float = 0.1
    val_segment_seconds: float = 4.0
    val_examples: int = 8  # fixed validation crops
    min_file_seconds: float = 0.25
    silence_db: float = -50.0  # crops quieter than this (RMS, dBFS) are redrawn ...
    quiet_fraction: float = 0.0  # ... except this share of them, kept as they are (quiet passages)
    silence_fraction: float = 0.0  # share of training crops replaced by digital silence (clean = degraded = 0)
    identity_fraction: float = 0.0  # share of training crops whose input is the clean audio itself (leave it alone)
    gain_db: list[float] = field(default_factory=lambda: [0.0, 0.0])  # [lo, hi]: per-crop level, uniform in dB
    # random equalisation (dB): each training pair goes through the same peaking filters, gains uniform in
    # +-eq_db, so a model cannot tell round trips apart by the spectra of the few recordings it trains on
    eq_db: float = 0.0
    # share of training crops with a second crop of the batch, degraded by the same shifter, added on both sides
    remix_fraction: float = 0.0
    # share of training crops whose shifter family and shift are hidden ("unknown") from a conditioned generator
    # (generator.band_gain.condition), as when a user cannot say how a file was shifted; clean input is always hidden
    unknown_fraction: float = 0.5
    # share of pieces whose clean audio is band-limited first (MP3 / Vorbis through soundfile, or a
    # low-pass at 16-20 kHz), so the model learns that an empty top band stays empty
    bandlimit_fraction: float = 0.0
    on_stale_cache: Literal["rebuild", "error"] = "rebuild"
    cache_only: bool = False  # train from the cache at cache_dir as it is, without audio_dir (e.g. a copied cache)
    seed: int = 0
    degrade: DegradeConfig = field(default_factory=DegradeConfig)

    def __post_init__(self):
        if self.sample_rate != 48000:
            raise ConfigError("data.sample_rate: unshift models run at 48000 Hz")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction: must be in [0, 1)")
        if self.segment_length <= 0 or self.batch_size <= 0:
            raise ConfigError("data.segment_length and data.batch_size: must be positive")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers: must be >= 0")
        for name in ("quiet_fraction", "silence_fraction", "identity_fraction", "bandlimit_fraction", "remix_fraction",
                     "unknown_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.{name}: must be in [0, 1]")
        if not 0.0 <= self.eq_db <= 12.0:
            raise ConfigError(f"data.eq_db: {self.eq_db} must be in [0, 12] dB (0: no equalisation)")
        if len(self.gain_db) != 2 or self.gain_db[0] > self.gain_db[1] or self.gain_db[1] > 0:
            raise ConfigError(f"data.gain_db: {self.gain_db} must be [lo, hi] with lo <= hi <= 0 dB "
                              "(stored pieces peak at -0.1 dBFS)")


@dataclass
class LossWeights:
    """Keyed by the logged names (``train/g/<name>``); a weight of 0 skips the term."""

    mel: float = 15.0
    l1: float = 0.0
    mrstft: float = 0.0
    lsd: float = 0.0  # multi-resolution log-spectral distance (gan.losses.reconstruction.LogSpectralLoss)
    feat: float = 2.0
    adv: float = 1.0
    detect: float = 1.0  # the degradation classifier's cross-entropy (with generator.band_gain.detect only)


@dataclass
class MelLossConfig:
    n_mels: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 80, 160, 320])
    window_lengths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    clamp_eps: float = 1e-5
    mag_weight: float = 0.0
    log_weight: float = 1.0
    pow: float = 1.0
    mel_fmin: list[float] = field(default_factory=lambda: [0.0] * 7)
    mel_fmax: list[Optional[float]] = field(default_factory=lambda: [None] * 7)

    def __post_init__(self):
        n = len(self.n_mels)
        if not (len(self.window_lengths) == len(self.mel_fmin) == len(self.mel_fmax) == n):
            raise ConfigError("loss.mel: n_mels, window_lengths, mel_fmin and mel_fmax need equal lengths")


@dataclass
class LossConfig:
    gan: Literal["lsgan", "hinge"] = "lsgan"
    mel: MelLossConfig = field(default_factory=MelLossConfig)
    mrstft_fft_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128])
    lsd_fft_sizes: list[int] = field(default_factory=lambda: [2048, 512])


@dataclass
class SchedulerConfig:
    """Per-step lr multiplier, a pure function of the optimizer step (see ``gan.optim.params.lr_factor``)."""

    name: Literal["exponential", "cosine", "constant"] = "exponential"
    gamma: float = 0.999996  # exponential: lr *= gamma every step after warmup (DAC)
    warmup_steps: int = 0  # linear warmup (step + 1) / warmup_steps, all schedules
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of the peak lr

    def __post_init__(self):
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError("optim.*.scheduler.gamma: must be in (0, 1]")
        if self.warmup_steps < 0:
            raise ConfigError("optim.*.scheduler.warmup_steps: must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("optim.*.scheduler.min_lr_ratio: must be in [0, 1]")


# Defaults of the fields left None, by optimizer name: DAC's AdamW, and the AdamW
# side of Muon from the best earlier Muon run.
_ADAMW_DEFAULTS = {"adamw": {"lr": 1e-4, "betas": (0.8, 0.99)}, "muon": {"lr": 1e-3, "betas": (0.9, 0.95)}}


@dataclass
class OptimizerConfig:
    """One network's optimiser.

    ``adamw``: torch AdamW on every parameter with ``lr, betas, eps, weight_decay``.
    ``muon``: Muon (``muon_*`` fields) on hidden weight matrices and AdamW
    (``lr, betas, eps, weight_decay``) on the rest, in one optimizer.
    ``lr`` / ``betas`` left out take the name's defaults (adamw: 1e-4, (0.8, 0.99)
    as DAC; muon: 1e-3, (0.9, 0.95)). Weight decay is decoupled in both.
    """

    name: Literal["muon", "adamw"] = "adamw"
    lr: Optional[float] = None  # AdamW lr (all params under adamw, non-matrices under muon)
    betas: Optional[tuple[float, float]] = None
    eps: float = 1e-8
    weight_decay: float = 0.01  # AdamW's (torch default, which DAC trains with)
    muon_lr: float = 1e-2
    muon_momentum: float = 0.95  # Nesterov by default
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_scale: Literal["spectral", "match_adamw"] = "spectral"  # sqrt(max(1, rows/cols)) | 0.2 sqrt(max(rows, cols))
    muon_weight_decay: float = 0.01
    grad_clip: Optional[float] = None  # None -> no clipping
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self):
        defaults = _ADAMW_DEFAULTS[self.name]
        if self.lr is None:
            self.lr = defaults["lr"]
        if self.betas is None:
            self.betas = defaults["betas"]
        if self.lr <= 0 or self.muon_lr <= 0:
            raise ConfigError("optim: learning rates must be positive")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("optim.*.betas: both must be in [0, 1)")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError("optim.*.muon_momentum: must be in [0, 1)")
        if self.muon_ns_steps < 1:
            raise ConfigError("optim.*.muon_ns_steps: must be at least 1")
        if self.weight_decay < 0 or self.muon_weight_decay < 0:
            raise ConfigError("optim.*.weight_decay and muon_weight_decay: must be >= 0")


@dataclass
class GeneratorOptimizerConfig(OptimizerConfig):
    """``optim.generator``: G's clipping (DAC's) is this class's own default, so it holds whatever part is written."""

    grad_clip: Optional[float] = 1000.0


@dataclass
class DiscriminatorOptimizerConfig(OptimizerConfig):
    """``optim.discriminator``: D's clipping (DAC's) is this class's own default."""

    grad_clip: Optional[float] = 10.0


@dataclass
class OptimConfig:
    # A nested section's defaults live in its own class (default_factory=the class itself): the loader builds
    # a written section from that class, so a default made by the parent's factory would be lost field by
    # field as soon as any part of the section is written.
    generator: GeneratorOptimizerConfig = field(default_factory=GeneratorOptimizerConfig)
    discriminator: DiscriminatorOptimizerConfig = field(default_factory=DiscriminatorOptimizerConfig)


# Trackers Accelerate supports, and the package each needs (``trainer.log_with``).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "aim": "aim",
                    "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                    "trackio": "trackio"}


@dataclass
class TrainerConfig:
    """The training loop. Steps count optimisation steps (each ``grad_accum`` micro-batches)."""

    max_steps: int  # steps in all; a resumed run may raise it
    pretrain_steps: int = 0  # generator-only (reconstruction) steps before D switches on; >= max_steps: G only
    log_every: int = 50  # steps between scalar logs (step 1 is always logged)
    val_every: int = 1000  # steps between validations (and the last step)
    save_every: int = 5000  # steps between checkpoints (and the last step)
    save_every_minutes: float = 60.0  # wall-clock minutes between checkpoints, whatever the step
    keep_last: int = 3  # checkpoints kept, newest first
    keep_every: int = 0  # steps between milestone checkpoints kept forever (0 = none)
    grad_accum: int = 1  # micro-batches per step
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 = autocast over fp32 weights
    compile: bool = False  # torch.compile (inductor) the models
    # torch.compile (inductor) only the generator's Snake activations: the largest share of a CPU step, and
    # seconds to compile (generators.layers.fuse_activations); on a CPU it needs a C++ compiler (without one:
    # a note, and the activations run uncompiled)
    compile_activations: bool = False
    ema_decay: float = 0.0  # per-step decay of the EMA of G (0 disables it; inference then uses G itself)
    max_nonfinite_skips: int = 10  # consecutive skipped steps of one network before the run stops
    # CPU only: torch intra-op threads per process; 0 = $OMP_NUM_THREADS if set, else the usable cores
    # divided by the processes on this machine (two busy processes on two cores otherwise slow 30-80x)
    threads: int = 0
    seed: int = 0  # seeds Python, NumPy and torch (weights, crops, RNG states)
    # experiment trackers (Accelerate's): scalars go to each; audio to tensorboard and wandb; images to those
    # that take images. Each tracker's package must be installed.
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self):
        if self.max_steps <= 0:
            raise ConfigError("trainer.max_steps: must be positive")
        if self.pretrain_steps < 0:
            raise ConfigError(f"trainer.pretrain_steps: {self.pretrain_steps} must be >= 0")
        for name in ("log_every", "val_every", "save_every", "grad_accum", "max_nonfinite_skips"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"trainer.{name}: must be positive")
        if self.threads < 0:
            raise ConfigError("trainer.threads: must be >= 0 (0 = automatic)")
        if self.keep_last < 1:
            raise ConfigError("trainer.keep_last: must be at least 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("trainer.ema_decay: must be in [0, 1)")
        for name in self.log_with:
            if name not in TRACKER_PACKAGES:
                raise ConfigError(f"trainer.log_with: unknown tracker {name!r}; known: {sorted(TRACKER_PACKAGES)}")
            if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
                raise ConfigError(f"trainer.log_with: {name} is not installed; pip install {TRACKER_PACKAGES[name]} "
                                  "or leave it out")


@dataclass
class Config:
    data: DataConfig
    generator: Any = field(metadata={"registry": "generators"})
    discriminators: list = field(metadata={"registry": "discriminators"})
    trainer: TrainerConfig
    loss_weights: LossWeights = field(default_factory=LossWeights)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        stride = getattr(self.generator, "total_stride", 1)
        if self.data.segment_length % stride:
            raise ConfigError(
                f"data.segment_length: {self.data.segment_length} must be a multiple of the "
                f"generator's total stride ({stride})"
            )
        if self.data.val_segment_seconds * self.data.sample_rate < self.data.segment_length:
            raise ConfigError("data.val_segment_seconds: validation crops must be at least segment_length long")
        band_gain = getattr(self.generator, "band_gain", None)
        if band_gain is not None and band_gain.detect is not None:
            hiding = [f"data.{name}=0" for name in ("unknown_fraction", "remix_fraction") if getattr(self.data, name)]
            if hiding:
                raise ConfigError(f"generator.band_gain.detect: set {' and '.join(hiding)}; the classifier learns each "
                                  "crop's true round trip (label 0: clean input), so no label may be hidden or mixed")
            if not self.loss_weights.detect > 0:
                raise ConfigError("loss_weights.detect: must be > 0 with generator.band_gain.detect (it trains the "
                                  "classifier); or leave detect out")
