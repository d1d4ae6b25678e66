"""Loading a run configuration: YAML -> the dataclasses of ``gan.config.schema``, with validation.

Every key is checked against the dataclass fields (unknown keys, wrong types and
missing required fields are errors that name the dotted key); command-line overrides
(``--set trainer.max_steps=10``) go through the same path. Generator and discriminator
sections are tagged by ``name`` and their dataclass comes from the model registries.

    cfg = load_config("demo", overrides=["trainer.max_steps=10"])
    text = dump_config(cfg)           # YAML that loads back to an equal config
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gan.config.schema import Config, ConfigError
from gan.log import get_logger

log = get_logger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _registry_config_class(registry: str, name: Any, key: str):
    if registry == "generators":
        import generators as reg
    else:
        import discriminators as reg
    if not isinstance(name, str):
        raise ConfigError(f"{key}.name: required, one of {sorted(reg.REGISTRY)}")
    if name not in reg.REGISTRY:
        raise ConfigError(f"{key}.name: unknown {registry[:-1]} {name!r}; known: {sorted(reg.REGISTRY)}")
    return reg.REGISTRY[name][1]


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` and convert it (lists -> tuples etc.)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(v, args[0], f"{key}.{i}") for i, v in enumerate(value))
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args)))
        (item,) = args or (Any,)
        return [_convert(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls, data: Any, prefix: str):
    """Build dataclass ``cls`` from a mapping, checking every key."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{_join(prefix, key)}: unknown key; known keys: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required, missing")
            continue
        value = data[name]
        registry = f.metadata.get("registry")
        if registry == "generators":
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping with a name")
            kwargs[name] = _build(_registry_config_class(registry, value.get("name"), key), value, key)
        elif registry == "discriminators":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{key}: expected a non-empty list of discriminator sections")
            items = []
            for i, item in enumerate(value):
                k = f"{key}.{i}"
                if not isinstance(item, dict):
                    raise ConfigError(f"{k}: expected a mapping with a name")
                items.append(_build(_registry_config_class(registry, item.get("name"), k), item, k))
            kwargs[name] = items
        else:
            kwargs[name] = _convert(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A bare name is looked up in ``configs/`` (with or without .yaml); a path is used as given."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml", CONFIG_DIR / f"{p}.yml"):
        if cand.is_file():
            return cand
    known = sorted(c.stem for c in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r}: no such file; give a path or one of {known}")


def apply_override(data: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to the raw config mapping in place."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. trainer.max_steps=10")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        here = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ConfigError(f"--set {dotted}: {here} is not an index of a list of {len(node)}")
            node = node[int(k)]
        elif isinstance(node, dict):
            node = node.setdefault(k, {})
        else:
            raise ConfigError(f"--set {dotted}: {here} is not a section")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {dotted}: {last} is not an index of a list of {len(node)}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {dotted}: parent is not a section")


# Keys and names an earlier version wrote (old -> new); configs and checkpoints that use them still load.
RENAMED_KEYS = {"trainer.warmup_steps": "trainer.pretrain_steps"}
RENAMED_DISCRIMINATORS = {"mrstft": "mrd"}


_SAID: set[str] = set()  # notes already given in this process (a resumed run loads its config twice)


def _said_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        log.warning(message)


def upgrade(data: dict) -> dict:
    """Rename in place what an earlier version called otherwise (``RENAMED_KEYS``, ``RENAMED_DISCRIMINATORS``).

    Says each rename once per process on stderr. Raises ``ConfigError`` when a mapping sets
    both the old and the new key to different values.
    """
    for old, new in RENAMED_KEYS.items():
        section, old_key = old.rsplit(".", 1)
        node = data.get(section)
        if isinstance(node, dict) and old_key in node:
            new_key = new.rsplit(".", 1)[1]
            value = node.pop(old_key)
            if new_key in node and node[new_key] != value:
                raise ConfigError(f"{old}: renamed {new}; both are set ({value!r}, {node[new_key]!r}): keep {new}")
            node[new_key] = value
            _said_once(f"note: config key {old} is now {new}; read as that")
    for i, item in enumerate(data.get("discriminators") or []):
        if isinstance(item, dict) and item.get("name") in RENAMED_DISCRIMINATORS:
            old, item["name"] = item["name"], RENAMED_DISCRIMINATORS[item["name"]]
            _said_once(f"note: discriminator {old!r} is now {item['name']!r} (discriminators.{i}.name); read as that")
    return data


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated ``Config`` from a raw mapping plus ``--set`` overrides (old key names are upgraded)."""
    data = upgrade(json.loads(json.dumps(data)))  # deep copy; YAML scalars only
    for o in overrides:
        key, sep, value = o.partition("=")
        o = RENAMED_KEYS.get(key.strip(), key.strip()) + sep + value
        apply_override(data, o)
    return _build(Config, upgrade(data), "")


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_unique_keys(node: yaml.Node, prefix: str, seen: set[int]) -> None:
    """Raise ``ConfigError`` for a key written twice in one mapping of the composed YAML ``node``.

    Keys a mapping takes from a merge key (``<<: *anchor``) may be overridden; only keys the
    mapping writes itself are compared. ``seen``: ids of nodes already checked (aliases).
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                _check_unique_keys(value_node, prefix, seen)
                continue
            key = _join(prefix, str(key_node.value)) if isinstance(key_node, yaml.ScalarNode) else prefix
            line = key_node.start_mark.line + 1
            if key in lines and isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"{key}: set twice (lines {lines[key]} and {line}); keep one")
            lines[key] = line
            _check_unique_keys(value_node, key, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, _join(prefix, str(i)), seen)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (plain YAML keeps the last)."""

    def construct_document(self, node: yaml.Node):
        _check_unique_keys(node, "", set())
        return super().construct_document(node)


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A run config from YAML: a bare name is looked up in ``configs/``, a path is used as given.

    ``overrides``: ``"a.b.c=value"`` strings (value parsed as YAML), validated like the file.
    Raises ``ConfigError`` (one line naming the dotted key) for a missing file, invalid YAML,
    a key written twice, an unknown key, a wrong type or a broken cross-field rule.
    """
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from None
    return config_from_dict(data, overrides)


def to_dict(cfg: Any) -> Any:
    """Plain-YAML form of a config (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(section: Any) -> str:
    """Stable short hash of a config section (e.g. the degradation settings of a cache)."""
    text = json.dumps(to_dict(section), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
