"""Conditioning on what was done to the input (generators/condition.py): the labels the data gives, the
zero start, "unknown" ignoring the shift, and the labels inference and evaluation pass."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gan.data.loader import SHIFTER_LABELS, TrainStream
from gan.dsp.shifters import SHIFTERS
from generators.band_gain import BandGain
from generators.condition import FAMILIES, UNKNOWN, Condition, ConditionConfig, family_index
from generators.dac_unet import DacUNet
from helpers import assert_chunked_equals_whole, enhancer
from test_data import SHIFTS, cfg_for, write_cache
from tiny_configs import tiny_band_gain, tiny_dac_unet

TINY = tiny_band_gain(condition=ConditionConfig())


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_condition(m: BandGain) -> BandGain:
    """``m`` with its encoder's last conv and its condition's weights moved off their zero start."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        m.to_gain[-1].parametrizations.weight.original0.fill_(0.5)
        m.condition.family.weight.copy_(torch.randn(m.condition.family.weight.shape, generator=g))
        m.condition.shift.weight.copy_(torch.randn(m.condition.shift.weight.shape, generator=g))
    return m


def test_labels_follow_the_shifter_registry():
    assert FAMILIES == tuple(SHIFTERS)
    assert SHIFTER_LABELS == {name: family_index(name) for name in FAMILIES}
    assert family_index(None) == family_index("unknown") == UNKNOWN == 0
    with pytest.raises(ValueError, match="'foo': unknown"):
        family_index("foo")


def test_an_untrained_condition_changes_nothing():
    torch.manual_seed(0)
    plain = BandGain(tiny_band_gain())
    m = BandGain(TINY)
    m.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():  # a trained encoder, an untrained condition
        for net in (plain, m):
            net.to_gain[-1].parametrizations.weight.original0.fill_(0.5)
    x = torch.randn(3, 1, 800) * 0.3
    family, shift = torch.tensor([0, 1, 5]), torch.tensor([3.0, -12.0, 7.0])
    torch.testing.assert_close(m(x, family, shift), plain(x), rtol=0, atol=0)


def test_unknown_reads_no_shift_and_a_known_label_changes_the_gains():
    m = trained_condition(BandGain(TINY))
    x = torch.randn(1, 1, 800).expand(4, 1, 800) * 0.3
    y = m(x, torch.tensor([0, 0, 1, 1]), torch.tensor([5.0, -9.0, 5.0, -9.0]))
    torch.testing.assert_close(y[0], y[1], rtol=0, atol=0)  # unknown: the shift is not read
    torch.testing.assert_close(y[0:1], m(x[:1]), rtol=0, atol=1e-6)  # no labels = unknown (batch of 1: rounding)
    assert (y[2] - y[0]).abs().max() > 1e-3 and (y[2] - y[3]).abs().max() > 1e-3  # family and shift are read
    emb = Condition(ConditionConfig(), 4)
    with pytest.raises(ValueError, match="2 family labels for a batch of 3"):
        emb(3, torch.tensor([0, 1]))


def test_batches_carry_family_labels_hidden_for_clean_input_and_a_share(tmp_path):
    cache = write_cache(tmp_path / "cache")
    manifest = json.loads((cache / "manifest.json").read_text())
    for item in manifest["splits"]["train"]["items"]:  # variant 0 from wsola, variant 1 from torchaudio
        item["shifters"] = {str(SHIFTS[0]): "wsola", str(SHIFTS[1]): "torchaudio"}
    (cache / "manifest.json").write_text(json.dumps(manifest))

    told = TrainStream(cache, cfg_for(cache, identity_fraction=0.25, unknown_fraction=0.0)).batch(3)
    same = (told["degraded"] == told["clean"]).all(dim=2)[:, 0]
    assert same.any() and (told["family"][same] == UNKNOWN).all()  # clean input: always unknown
    expected = torch.where(told["shift"] == SHIFTS[0], SHIFTER_LABELS["wsola"], SHIFTER_LABELS["torchaudio"])
    assert torch.equal(told["family"][~same], expected[~same])

    hidden = TrainStream(cache, cfg_for(cache, identity_fraction=0.25, unknown_fraction=0.5)).batch(3)
    for key in ("clean", "degraded", "shift"):  # the audio does not depend on the share hidden
        assert torch.equal(hidden[key], told[key])
    dropped = (hidden["family"] == UNKNOWN) & ~same
    assert 0.3 < float(dropped.sum()) / float((~same).sum()) < 0.7
    assert torch.equal(hidden["family"][~dropped], told["family"][~dropped])


def test_a_conditioned_generator_trains_on_the_labels(tiny_data, tmp_path):
    """Training reaches the condition's weights (they start at zero and move from the second step on, once the
    encoder's last conv has left zero); unknown rows read no shift, so a NaN shift there changes nothing."""
    from gan.data.loader import make_train_loader
    from helpers import make_trainer

    tr = make_trainer(tiny_data, tmp_path / "run", overrides=["generator.residual=true",
                                                              "generator.output_activation=none",
                                                              "generator.band_gain={condition: {}}"])
    batch = next(iter(make_train_loader(tr.cache_dir, tr.cfg.data, 0, 1)))
    batch["family"][:] = torch.tensor([SHIFTER_LABELS["torchaudio"], UNKNOWN])
    tr.train_step([batch])
    assert tr.G.band_gain.condition.family.weight.abs().sum() == 0
    tr.train_step([batch])
    condition = tr.G.band_gain.condition
    assert condition.family.weight[SHIFTER_LABELS["torchaudio"]].abs().sum() > 0
    assert condition.shift.weight.abs().sum() > 0
    x = torch.randn(2, 1, 4096) * 0.1
    with torch.no_grad():
        a = tr.G(x, torch.tensor([UNKNOWN, UNKNOWN]), torch.tensor([3.0, float("nan")]))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, tr.G(x).detach(), rtol=0, atol=1e-6)
    tr.close()


def test_inference_tells_trained_shifters_only_and_stays_seamless():
    torch.manual_seed(0)
    cfg = tiny_dac_unet(residual=True, output_activation="none", band_gain=TINY)
    model = DacUNet(cfg)
    trained_condition(model.band_gain)
    enh = enhancer(model, cfg, chunk_seconds=1600 / 48000)
    enh.cfg.data.degrade.shifters = {"torchaudio": 1.0, "wsola": 1.0, "librosa": 0.0}
    assert enh.conditioned
    assert enh.label(None) == (UNKNOWN, 0.0) and enh.label(("librosa", 3)) == (UNKNOWN, 0.0)
    assert enh.label(("wsola", -5)) == (family_index("wsola"), -5.0)
    assert enh.label(("unknown", 3)) == (UNKNOWN, 0.0)
    with pytest.raises(ValueError, match="'foo'"):
        enh.label(("foo", 1))
    for bad in (0.0, float("nan"), 30.0):
        with pytest.raises(ValueError, match="finite, non-zero and within"):
            enh.label(("wsola", bad))
    x = (torch.randn(1, 6 * 1600 + 77) * 0.3).clamp(-0.9, 0.9)
    told = enh.enhance(x, told=("torchaudio", 7))
    with torch.inference_mode():
        whole = model(x[:, None], torch.tensor([family_index("torchaudio")]), torch.tensor([7.0]))[:, 0]
    torch.testing.assert_close(told, whole, rtol=1e-4, atol=1e-5)
    assert (told - enh.enhance(x)).abs().max() > 1e-4  # the label reached the model
    assert_chunked_equals_whole(enh, model)  # unknown, as before
    from gan.dsp.shifters import apply_shift  # a shift applied here is not told: labels describe round trips
    shifted = apply_shift(x, 48000, 3, enh.cfg.data.degrade, enh.shifter)
    torch.testing.assert_close(enh.enhance(x, shift=3), enh.enhance(shifted), rtol=0, atol=1e-6)


def test_evaluation_tells_each_round_trip(tmp_path, monkeypatch):
    from gan.eval import evaluation
    from gan.eval.evaluation import Example

    seen = []

    class Recorder:
        def __init__(self, *a, **k):
            pass

        def enhance(self, x, rate, name="", told=None):
            seen.append(told)
            return torch.as_tensor(x)

    clean = (np.random.default_rng(0).standard_normal(4800) * 0.1).astype(np.float32)
    exs = [Example("a.wav", "+12", clean, clean * 0.5, "torchaudio"), Example("a.wav", "0", clean, clean, "none")]
    monkeypatch.setattr(evaluation, "examples", lambda *a, **k: iter(exs))
    monkeypatch.setattr("gan.inference.Enhancer", Recorder)
    loaded = SimpleNamespace(cfg=SimpleNamespace(loss=None, data=SimpleNamespace(degrade=None),
                                                 generator=SimpleNamespace(name="dac_unet")),
                             path="x", step=0, ema=False)
    monkeypatch.setattr("gan.inference.load_generator", lambda c: loaded)
    monkeypatch.setattr(evaluation, "loaded_mix", lambda g: ["torchaudio"])
    evaluation.evaluate(["x"], tmp_path, metrics=["lsd"], progress=False, told=True)
    evaluation.evaluate(["x"], tmp_path, metrics=["lsd"], progress=False)
    assert seen == [("torchaudio", 12), None, None, None]
