"""Typed run configuration: ``schema`` (one dataclass per YAML section, with units) and
``loader`` (YAML and ``--set`` overrides -> validated dataclasses, dump, hash).

    cfg = load_config("demo", overrides=["trainer.max_steps=10"])
"""
from gan.config.loader import (CONFIG_DIR, apply_override, config_from_dict, config_hash, dump_config, load_config,
                               resolve_config_path, to_dict)
from gan.config.schema import (Config, ConfigError, DataConfig, DegradeConfig, LossConfig, LossWeights, MelLossConfig,
                               OptimConfig, OptimizerConfig, SchedulerConfig, TrainerConfig)

__all__ = ["CONFIG_DIR", "Config", "ConfigError", "DataConfig", "DegradeConfig", "LossConfig", "LossWeights",
           "MelLossConfig", "OptimConfig", "OptimizerConfig", "SchedulerConfig", "TrainerConfig", "apply_override",
           "config_from_dict", "config_hash", "dump_config", "load_config", "resolve_config_path", "to_dict"]
