"""DeepSpeed ZeRO-1/2 through Accelerate: one engine for the generator, one for the discriminator.

``accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml`` sets
``ACCELERATE_USE_DEEPSPEED=true`` and the ZeRO settings in the environment; the trainer
then asks this module for its ``Accelerator`` arguments and prepares G and D as two
engines through Accelerate's multi-plugin API (one ``DeepSpeedPlugin`` per network,
selected before each ``prepare``):

    kwargs = accelerator_kwargs(cfg)           # validates; may set cfg.trainer.mixed_precision
    acc = Accelerator(**kwargs)
    ds = Engines(acc, cfg.trainer.mixed_precision)
    G, D, opt_g, opt_d = ds.prepare(g, d, opt_g, opt_d)
    with ds.autocast():
        loss = ...
    ds.backward(G, loss / k, last=i == k - 1)  # per micro-batch
    norm = ds.step(G)                          # clip + step (skipped when the norm is not finite) + zero grads

What each engine owns (and what the plain path does itself): gradient clipping
(``gradient_clipping`` = ``optim.<net>.grad_clip``), the step, zeroing the gradients,
skipping a step whose global gradient norm is not finite, gradient accumulation
(``gradient_accumulation_steps`` = ``trainer.grad_accum``, boundary set per micro-batch)
and ``train_micro_batch_size_per_gpu`` = ``data.batch_size``. The learning-rate
schedules stay ours: they write ``lr`` into the torch optimizer's param groups, which
the ZeRO optimizer steps with.

Precision: bf16 runs as torch autocast over fp32 weights (DeepSpeed's ``torch_autocast``
section), as on the plain path; DeepSpeed's own bf16/fp16 weight modes are refused.

Accelerate's ``backward`` / ``clip_grad_norm_`` talk to the first prepared engine only,
so the trainer calls the engines through this module instead.
"""
from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from pathlib import Path

import torch

from gan.config import Config, ConfigError
from gan.log import get_logger
from gan.train.checkpoint import CheckpointError

log = get_logger(__name__)

NETWORKS = ("generator", "discriminator")
_SUPPORTED_STAGES = (1, 2)


def deepspeed_requested() -> bool:
    """True when the launcher asked for DeepSpeed (``accelerate launch`` with a DeepSpeed config)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _single_process_env() -> None:
    """A world of one when no launcher set ``LOCAL_RANK`` (DeepSpeed would otherwise look for MPI)."""
    if "LOCAL_RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)


def _value(ds_config: dict, dotted: str):
    node = ds_config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def check_supported(cfg: Config, ds_config: dict) -> None:
    """Refuse what this trainer cannot run under DeepSpeed, with a one-line ``ConfigError``."""
    for net in NETWORKS:
        if getattr(cfg.optim, net).name == "muon":
            raise ConfigError(
                f"optim.{net}.name: muon cannot run under DeepSpeed ZeRO (ZeRO flattens parameters into 1-D "
                f"partitions, Muon needs the 2-D matrices); set optim.{net}.name=adamw or launch without "
                "DeepSpeed (DDP) to keep Muon"
            )
    stage = _value(ds_config, "zero_optimization.stage")
    if stage not in _SUPPORTED_STAGES:
        raise ConfigError(
            f"DeepSpeed zero_stage {stage}: unsupported; use zero_stage 1 or 2 (ZeRO-3 partitions the "
            "discriminator's weights, which the generator's adversarial loss runs outside its engine; "
            "for stage 0 use plain DDP)"
        )
    for what in ("offload_optimizer", "offload_param"):
        device = _value(ds_config, f"zero_optimization.{what}.device")
        if device not in (None, "none"):
            raise ConfigError(
                f"DeepSpeed {what}_device {device}: offload is not supported (Accelerate would replace the "
                f"optimizer with DeepSpeedCPUAdam, outside our schedules); set {what}_device: none"
            )
    for dtype in ("fp16", "bf16"):
        if str(_value(ds_config, f"{dtype}.enabled")).lower() == "true":
            raise ConfigError(
                f"DeepSpeed config enables {dtype} weights; remove its '{dtype}' section and set "
                "trainer.mixed_precision=bf16 (bf16 runs as autocast over fp32 weights)"
            )
    for key in ("optimizer", "scheduler"):
        if key in ds_config:
            raise ConfigError(
                f"DeepSpeed config has a '{key}' section; remove it (optimizers and schedules come from "
                "the training config's optim section)"
            )


def resolve_precision(cfg: Config) -> str:
    """The run's mixed precision: bf16 when the training config or the launcher asks for it.

    Writes the result into ``cfg.trainer.mixed_precision`` (so the run's resolved
    config records it) and says so when the launcher's setting decided.
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher not in ("no", "bf16"):
        raise ConfigError(f"accelerate mixed_precision {launcher}: unsupported; use bf16 or no")
    mine = cfg.trainer.mixed_precision
    if mine == "no" and launcher == "bf16":
        log.info("DeepSpeed: bf16 autocast from the accelerate config (trainer.mixed_precision was 'no')")
        cfg.trainer.mixed_precision = "bf16"
    return cfg.trainer.mixed_precision


def _fill(ds_config: dict, key: str, value, setting: str, shown) -> None:
    """Set ``key`` unless the DeepSpeed config already holds a different, explicit value."""
    have = ds_config.get(key, "auto")
    if have != "auto" and have != value:
        raise ConfigError(
            f"DeepSpeed {key}={have} conflicts with {setting}={shown}; remove {key} from the accelerate / "
            f"DeepSpeed config (unshift sets it from {setting})"
        )
    ds_config[key] = value


def build_plugins(cfg: Config) -> dict:
    """``{"generator": DeepSpeedPlugin, "discriminator": DeepSpeedPlugin}`` from the launcher's settings.

    Each plugin starts from what ``accelerate launch`` put in the environment (ZeRO
    stage, or a DeepSpeed JSON via ``deepspeed_config_file``) and gets the network's
    clipping, our micro-batch size and accumulation, and bf16 autocast when asked.
    """
    from accelerate.utils import DeepSpeedPlugin

    plugins = {}
    for net in NETWORKS:
        plugin = DeepSpeedPlugin()
        ds_config = plugin.deepspeed_config
        check_supported(cfg, ds_config)
        clip = getattr(cfg.optim, net).grad_clip
        _fill(ds_config, "gradient_clipping", float(clip or 0.0), f"optim.{net}.grad_clip", clip)
        _fill(ds_config, "train_micro_batch_size_per_gpu", cfg.data.batch_size, "data.batch_size", cfg.data.batch_size)
        _fill(ds_config, "gradient_accumulation_steps", cfg.trainer.grad_accum, "trainer.grad_accum",
              cfg.trainer.grad_accum)
        if cfg.trainer.mixed_precision == "bf16":
            ds_config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
        plugins[net] = plugin
    return plugins


def accelerator_kwargs(cfg: Config) -> dict:
    """Keyword arguments for ``Accelerator`` under DeepSpeed (validates the setup first).

    On a machine without CUDA the process group is gloo (Accelerate picks no backend
    for DeepSpeed on CPU and would leave each process alone).
    """
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    check_supported(cfg, DeepSpeedPlugin().deepspeed_config)  # refuse before saying anything else
    resolve_precision(cfg)
    plugins = build_plugins(cfg)
    _single_process_env()
    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    # mixed_precision "no": Accelerate would otherwise switch on DeepSpeed's bf16 weights
    return {"cpu": False, "mixed_precision": "no", "deepspeed_plugins": plugins, "kwargs_handlers": handlers,
            "dynamo_backend": "inductor" if cfg.trainer.compile else "no"}


class Engines:
    """The two DeepSpeed engines' side of a training step."""

    def __init__(self, accelerator, mixed_precision: str = "no"):
        self.accelerator = accelerator
        self.mixed_precision = mixed_precision

    def prepare(self, g, d, opt_g, opt_d):
        """(G, D, opt_g, opt_d) as two engines and their optimizer wrappers, G prepared first."""
        acc = self.accelerator
        acc.state.select_deepspeed_plugin("generator")
        engine_g, opt_g = acc.prepare(g, opt_g)
        acc.state.select_deepspeed_plugin("discriminator")
        engine_d, opt_d = acc.prepare(d, opt_d)
        return engine_g, engine_d, opt_g, opt_d

    def autocast(self):
        """bf16 autocast around our own calls too (the generator's adversarial loss runs D outside its engine)."""
        if self.mixed_precision != "bf16":
            return nullcontext()
        return torch.autocast(device_type=self.accelerator.device.type, dtype=torch.bfloat16)

    @staticmethod
    def backward(engine, loss: torch.Tensor, last: bool) -> None:
        """Backward of one micro-batch's loss (already divided by the micro-batch count)."""
        engine.set_gradient_accumulation_boundary(last)
        engine.backward(loss, scale_wrt_gas=False)

    @staticmethod
    def step(engine) -> float:
        """Clip, step and zero the gradients; returns the global gradient norm (inf or nan: step skipped)."""
        engine.step()
        norm = engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)


def check_resume(path: Path, deepspeed: bool, world_size: int) -> None:
    """Refuse a checkpoint written by the other backend, or by ZeRO on another number of processes."""
    path = Path(path)
    ds_dirs = sorted(p for p in path.glob("pytorch_model*") if p.is_dir())
    if ds_dirs and not deepspeed:
        raise CheckpointError(
            f"checkpoint {path}: written by a DeepSpeed run; resume it with the DeepSpeed accelerate config "
            "(its generator.pt holds the inference weights)"
        )
    if not deepspeed:
        return
    if not ds_dirs:
        raise CheckpointError(
            f"checkpoint {path}: not written by a DeepSpeed run; resume it without DeepSpeed or start a new --run-dir"
        )
    shards = len(list(ds_dirs[0].glob("*optim_states.pt")))
    if shards != world_size:
        raise CheckpointError(
            f"checkpoint {path}: ZeRO state is split over {shards} processes, this run has {world_size}; "
            f"resume with {shards} processes"
        )


__all__ = ["deepspeed_requested", "check_supported", "resolve_precision", "build_plugins", "accelerator_kwargs",
           "Engines", "check_resume", "NETWORKS"]
