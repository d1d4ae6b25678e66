from dataclasses import dataclass

import pytest
import torch.nn as nn

import discriminators
import generators
import yaml

from gan.config import (CONFIG_DIR, ConfigError, DegradeConfig, TrainerConfig, config_from_dict, config_hash,
                        dump_config, load_config, resolve_config_path)
from gan.config.loader import _build


@dataclass
class _FakeGen:
    name: str = "fake_gen"
    channels: int = 4
    strides: list[int] = None

    @property
    def total_stride(self) -> int:
        out = 1
        for s in self.strides or [1]:
            out *= s
        return out


@dataclass
class _FakeDisc:
    name: str = "fake_disc"
    periods: list[int] = None


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setitem(generators.REGISTRY, "fake_gen", (nn.Identity, _FakeGen))
    monkeypatch.setitem(discriminators.REGISTRY, "fake_disc", (nn.Identity, _FakeDisc))


def base() -> dict:
    return {
        "data": {"audio_dir": "data/demo", "cache_dir": "cache/x", "segment_length": 1024},
        "generator": {"name": "fake_gen", "strides": [2, 4]},
        "discriminators": [{"name": "fake_disc", "periods": [2, 3]}],
        "trainer": {"max_steps": 100, "pretrain_steps": 10},
    }


def test_defaults_and_round_trip(fake_registry, tmp_path):
    cfg = config_from_dict(base())
    assert cfg.data.degrade.shifts == [-12, -11, -10, 10, 11, 12]
    assert cfg.loss_weights.mel == 15.0 and cfg.optim.generator.grad_clip == 1000.0
    assert cfg.optim.discriminator.grad_clip == 10.0
    text = dump_config(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_config(path) == cfg
    assert dump_config(load_config(path)) == text


@pytest.mark.parametrize("override, message", [
    ("trainer.max_stepz=3", "trainer.max_stepz: unknown key"),
    ("trainer.max_steps=abc", "trainer.max_steps: expected an integer"),
    ("trainer.max_steps=2.5", "trainer.max_steps: expected an integer"),
    ("trainer.compile=1", "trainer.compile: expected true or false"),
    ("trainer.mixed_precision=fp8", "trainer.mixed_precision: expected one of"),
    ("data.degrade.shifts=[1, x]", "data.degrade.shifts.1: expected an integer"),
    ("optim.generator.betas=[0.9]", "optim.generator.betas: expected 2 values"),
    ("generator.name=nope", "generator.name: unknown generator 'nope'"),
    ("discriminators.0.periodz=[2]", "discriminators.0.periodz: unknown key"),
    ("discriminators.3.periods=[2]", "discriminators.3 is not an index"),
    ("trainer.pretrain_steps=-1", "trainer.pretrain_steps: -1 must be >= 0"),
    ("data.segment_length=1001", "data.segment_length: 1001 must be a multiple of the generator's total stride"),
    ("trainer.max_steps", "expected key=value"),
    ("data.eq_db=30", "data.eq_db: 30.0 must be in [0, 12] dB"),
])
def test_errors_name_the_dotted_key(fake_registry, override, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(base(), [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_required_field(fake_registry):
    d = base()
    del d["trainer"]["max_steps"]
    with pytest.raises(ConfigError, match=r"^trainer.max_steps: required, missing$"):
        config_from_dict(d)
    d = base()
    del d["data"]
    with pytest.raises(ConfigError, match=r"^data: required, missing$"):
        config_from_dict(d)


def test_overrides_go_through_validation_and_apply(fake_registry):
    cfg = config_from_dict(base(), ["trainer.max_steps=11", "data.degrade.shifts=[3]", "optim.generator.lr=0.5",
                                    "discriminators.0.periods=[5]", "data.degrade.shifters={torchaudio: 1, stretch: 2}"])
    assert cfg.trainer.max_steps == 11 and cfg.data.degrade.shifts == [3]
    assert cfg.optim.generator.lr == 0.5 and cfg.discriminators[0].periods == [5]
    assert config_from_dict(base(), ["optim.generator.lr=1e-4"]).optim.generator.lr == 1e-4
    with pytest.raises(ConfigError, match="optim.generator.lr: expected a number"):
        config_from_dict(base(), ["optim.generator.lr=fast"])
    assert cfg.data.degrade.shifters == {"torchaudio": 1.0, "stretch": 2.0}
    assert isinstance(cfg.optim.generator.betas, tuple)


def test_section_builder_directly():
    t = _build(TrainerConfig, {"max_steps": 5}, "trainer")
    assert t.max_steps == 5 and t.pretrain_steps == 0
    with pytest.raises(ConfigError, match="trainer.keep_last: must be at least 1"):
        _build(TrainerConfig, {"max_steps": 5, "keep_last": 0}, "trainer")


def test_config_lookup(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        resolve_config_path("definitely_not_a_config")
    p = tmp_path / "x.yaml"
    p.write_text("a: [1\n")
    assert resolve_config_path(p) == p
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_a_key_written_twice_is_an_error_naming_it_and_the_file(fake_registry, tmp_path):
    p = tmp_path / "twice.yaml"
    text = yaml.safe_dump(base(), sort_keys=False)  # trainer: max_steps: 100, pretrain_steps: 10 last
    p.write_text(text + "  max_steps: 200\n")
    n = len(text.splitlines())
    with pytest.raises(ConfigError, match=rf"^config {p}: trainer.max_steps: set twice \(lines {n - 1} and {n + 1}\); "
                                          "keep one$"):
        load_config(p)
    # anchors and merge keys still work: a key a mapping takes from `<<` may be overridden there
    p.write_text(text + "  log_every: 7\noptim:\n  generator:\n    scheduler: &s {name: cosine, warmup_steps: 2}\n"
                 "  discriminator:\n    scheduler:\n      <<: *s\n      warmup_steps: 5\n")
    cfg = load_config(p)
    assert cfg.trainer.log_every == 7 and cfg.optim.discriminator.scheduler.name == "cosine"
    assert (cfg.optim.generator.scheduler.warmup_steps, cfg.optim.discriminator.scheduler.warmup_steps) == (2, 5)


def test_hash_is_stable_and_sensitive(fake_registry):
    a = config_from_dict(base())
    b = config_from_dict(base(), ["data.degrade.shifts=[12]"])
    # pinned: a cache's name must not change between versions or processes for the same settings
    assert config_hash(DegradeConfig()) == "7cdc65d38eeb515f" and config_hash({"a": [1, 2]}) == "0bf464f8d802f582"
    assert config_hash(a.data.degrade) == config_hash(config_from_dict(base()).data.degrade)
    assert config_hash(a.data.degrade) != config_hash(b.data.degrade)


def test_shipped_configs_load_and_round_trip():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"demo", "gan_dac", "gan_wavunet"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
        assert load_config(f"{name}.yaml") == cfg


def test_keys_of_an_earlier_version_load_under_their_new_names(capsys, monkeypatch):
    import gan.config.loader

    monkeypatch.setattr(gan.config.loader, "_SAID", set())
    d = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    pretrain_steps = d["trainer"]["warmup_steps"] = d["trainer"].pop("pretrain_steps")
    d["discriminators"][1]["name"] = "mrstft"
    cfg = config_from_dict(d)
    assert cfg.trainer.pretrain_steps == pretrain_steps and cfg.discriminators[1].name == "mrd"
    err = capsys.readouterr().err
    assert "trainer.warmup_steps is now trainer.pretrain_steps" in err and "'mrstft' is now 'mrd'" in err
    assert config_from_dict(d, ["trainer.warmup_steps=7"]).trainer.pretrain_steps == 7
    d["trainer"]["pretrain_steps"] = 3
    with pytest.raises(ConfigError, match="trainer.warmup_steps: renamed trainer.pretrain_steps; both are set"):
        config_from_dict(d)


def test_log_with_names_installed_trackers_only():
    assert TrainerConfig(max_steps=1).log_with == ["tensorboard"]
    with pytest.raises(ConfigError, match="trainer.log_with: unknown tracker 'tensorbord'"):
        TrainerConfig(max_steps=1, log_with=["tensorbord"])
    with pytest.raises(ConfigError, match="trainer.log_with: aim is not installed; pip install aim"):
        TrainerConfig(max_steps=1, log_with=["aim"])


# ------------------------------------------------------------------ partial sections keep every other default

def _minimal() -> dict:
    """Only the required keys: every other field of every section is a default."""
    return {"data": {"audio_dir": "data/demo", "cache_dir": "cache/x"}, "generator": {"name": "dac_unet"},
            "discriminators": [{"name": "mpd"}, {"name": "mrd"}], "trainer": {"max_steps": 10}}


def _sections(node, path: str = ""):
    """Dotted path -> config object of every section (dataclass) below ``node``, lists included."""
    import dataclasses

    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _sections(item, f"{path}.{i}")
        return
    if not dataclasses.is_dataclass(node):
        return
    if path:
        yield path, node
    for f in dataclasses.fields(node):
        yield from _sections(getattr(node, f.name), f"{path}.{f.name}".lstrip("."))


SECTIONS = dict(_sections(config_from_dict(_minimal())))


def test_every_nested_section_is_listed():
    assert {"data.degrade", "loss.mel", "optim.generator", "optim.discriminator.scheduler", "generator",
            "discriminators.1"} <= set(SECTIONS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_writing_part_of_a_section_keeps_every_other_default(section):
    """Writing any one field of a section, alone, at its default value (a subsection as an empty mapping) changes
    nothing else: e.g. a config with only ``optim: {discriminator: {lr: ...}}`` keeps the clipping."""
    import dataclasses

    from gan.config import to_dict

    expected = to_dict(config_from_dict(_minimal()))
    obj = SECTIONS[section]
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        d = _minimal()
        node = d
        for key in section.split("."):
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[f.name] = {} if dataclasses.is_dataclass(value) else to_dict(value)
        assert to_dict(config_from_dict(d)) == expected, f"{section}.{f.name}"


def test_set_one_optimizer_field_keeps_both_clippings():
    for override in ("optim.generator.lr=2e-4", "optim.discriminator.lr=2e-4"):
        optim = config_from_dict(_minimal(), [override]).optim
        assert (optim.generator.grad_clip, optim.discriminator.grad_clip) == (1000.0, 10.0), override


def test_a_sections_defaults_live_in_its_own_class():
    """No parent builds a nested section with arguments (``default_factory=lambda: X(a=1)``): the loader builds a
    written section from its class, so such a default would vanish as soon as any part of it is written."""
    import dataclasses

    for path, obj in SECTIONS.items():
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                assert f.default_factory is type(value) and value == type(value)(), f"{path}.{f.name}"
