"""Degradation detection (generators/detection.py): the classifier's loss, its classes against the data's
labels, a blind audio path, the config's refusals and the trainer reaching it."""
from __future__ import annotations

import math

import pytest
import torch

from gan.config import ConfigError
from gan.data.loader import SHIFTER_LABELS
from generators.band_gain import BandGain, BandGainConfig
from generators.detection import CLASSES, Detection, DetectionConfig, detecting
from helpers import make_trainer
from tiny_configs import single_thread

TINY = BandGainConfig(n_fft=64, hop=16, n_bands=6, channels=4, context_seconds=6 * 16 / 48000,
                      detect=DetectionConfig(weight=0.5))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def test_classes_are_the_data_labels():
    assert CLASSES[0] == "clean input"
    assert {name: CLASSES.index(name) for name in SHIFTER_LABELS} == SHIFTER_LABELS


def test_loss_is_the_weighted_cross_entropy_over_rows_and_frames():
    torch.manual_seed(0)
    d = Detection(DetectionConfig(weight=0.5), channels=3)
    logits = torch.randn(2, len(CLASSES), 4)
    labels = torch.tensor([0, 5])
    log_p = logits.log_softmax(dim=1)  # (B, L, F)
    by_hand = -(log_p[0, 0].mean() + log_p[1, 5].mean()) / 2
    torch.testing.assert_close(d.loss(logits, labels), 0.5 * by_hand)
    # uniform logits: ln L nats whatever the labels
    assert d.loss(torch.zeros(2, len(CLASSES), 4), labels).item() == pytest.approx(0.5 * math.log(len(CLASSES)))
    p = d.probabilities(logits)
    assert p.shape == (2, len(CLASSES)) and torch.allclose(p.sum(1), torch.ones(2))
    for bad in (torch.tensor([0]), torch.tensor([0, len(CLASSES)]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match="detect: "):
            d.loss(logits, bad)


def test_the_audio_path_stays_blind():
    """The classifier is a head on the context: with the same weights the output equals a band gain
    without it, and the labels (targets, not inputs) change nothing; a labelled pass leaves one loss."""
    torch.manual_seed(0)
    plain = BandGain(BandGainConfig(**{**TINY.__dict__, "detect": None}))
    m = BandGain(TINY)
    missing = m.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("detection.") for k in missing)
    with torch.no_grad():
        for net in (plain, m):
            net.to_gain[-1].parametrizations.weight.original0.fill_(0.5)
    x = torch.randn(3, 1, 800) * 0.3
    y = m(x, torch.tensor([0, 1, 5]), torch.tensor([0.0, 3.0, -12.0]))
    torch.testing.assert_close(y, plain(x), rtol=0, atol=0)
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)
    assert m.auxiliary_losses() == {}  # the unlabelled pass came last
    m(x, torch.tensor([0, 1, 5]))
    losses = m.auxiliary_losses()
    assert set(losses) == {"detect"} and losses["detect"].requires_grad
    assert m.auxiliary_losses() == {}  # handed over once
    assert m.last_logits.shape == (3, len(CLASSES), 800 // 16 + 1)


def test_the_config_refuses_labels_that_do_not_mean_the_round_trip(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="condition and detect"):
        BandGainConfig(condition={}, detect=DetectionConfig())
    with pytest.raises(ValueError, match="weight"):
        DetectionConfig(weight=0.0)
    for data in ("data.unknown_fraction=0.5", "data.remix_fraction=0.2"):
        with pytest.raises(ConfigError, match="unknown_fraction=0 and data.remix_fraction=0"):
            make_trainer(tiny_data, tmp_path / "bad", overrides=[
                "generator.residual=true", "generator.output_activation=none",
                "generator.band_gain={detect: {}}", "data.unknown_fraction=0", data])


def test_training_reaches_the_classifier_and_logs_its_loss(tiny_data, tmp_path):
    from gan.data.loader import make_train_loader

    tr = make_trainer(tiny_data, tmp_path / "run", overrides=[
        "generator.residual=true", "generator.output_activation=none", "generator.band_gain={detect: {}}",
        "data.unknown_fraction=0"])
    assert detecting(tr.cfg.generator)
    head = tr.G.band_gain.detection.head
    before = {k: v.clone() for k, v in head.state_dict().items()}
    batch = next(iter(make_train_loader(tr.cache_dir, tr.cfg.data, 0, 1)))
    batch["family"][:] = torch.tensor([SHIFTER_LABELS["torchaudio"], 0])
    logs = tr.train_step([batch])
    assert 0 < logs["train/g/detect"] < 2 * math.log(len(CLASSES))
    assert logs["train/g/total"] >= logs["train/g/detect"]
    assert any(not torch.equal(before[k], v) for k, v in head.state_dict().items())
    tr.close()


def test_the_loss_teaches_the_encoder_to_tell_inputs_apart():
    """Tones (label 1) against noise (label 0): a few dozen Adam steps on the loss alone take it from ln L
    to near zero, through the encoder and the head (nothing else is trained)."""
    torch.manual_seed(0)
    m = BandGain(TINY)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    t = torch.arange(800) / 48000
    tones = torch.stack([torch.sin(2 * math.pi * f * t) for f in (3000.0, 5000.0, 7000.0, 9000.0)])[:, None]
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    for _ in range(60):
        x = torch.cat([tones, torch.randn(4, 1, 800) * 0.5])
        m(x, labels)
        loss = m.auxiliary_losses()["detect"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * TINY.detect.weight * math.log(len(CLASSES))
    m(torch.cat([tones, torch.randn(4, 1, 800) * 0.5]))
    assert (m.detection.probabilities(m.last_logits).argmax(1) == labels).all()


def test_the_curve_reports_what_the_classifier_names():
    """``bench.py curve``'s detection with a classifier whose bias says "torchaudio" (probability 1 after
    softmax of a +50 logit): right on torchaudio's round trips, wrong on the rest; the level-losing
    probability cannot separate anything (AUC 0.5)."""
    from types import SimpleNamespace

    from gan.bench.curve import detection

    m = BandGain(TINY)
    with torch.no_grad():
        m.detection.head.parametrizations.weight.original0.zero_()
        m.detection.head.bias.zero_()
        m.detection.head.bias[CLASSES.index("torchaudio")] = 50.0
    torch.manual_seed(0)
    examples = [SimpleNamespace(shifter=name, degraded=torch.randn(800).numpy())
                for name in ("torchaudio", "wsola", "torchaudio", "none")]
    report = detection(m, examples)["classifier"]
    assert report["accuracy"] == {"torchaudio": 1.0, "wsola": 0.0, "none": 0.0}
    assert report["mean_probability"]["none"]["torchaudio"] == 1.0
    assert report["mean_probability"]["wsola"]["clean input"] == 0.0
    assert report["auc_level_losing"] == 0.5


def test_enhance_says_what_the_classifier_takes_each_file_for(tmp_path, registry, capsys):
    """``launch/enhance.py`` prints the classifier's guess per file (any rate and channel count, read at 48 kHz
    mono), best first; a model without a classifier prints none and ``guess`` refuses it."""
    import sys

    import numpy as np
    import soundfile as sf

    from conftest import ROOT
    from gan.inference import Enhancer, load_generator
    from helpers import TINY_DAC, write_checkpoint

    band_gain = {"n_fft": 64, "hop": 16, "n_bands": 6, "channels": 4, "detect": {}}
    model = write_checkpoint(tmp_path / "run", {**TINY_DAC, "residual": True, "output_activation": "none",
                                                "band_gain": band_gain}, data={"unknown_fraction": 0.0})
    with torch.no_grad():  # a classifier sure of "wsola", then "clean input"
        model.band_gain.detection.head.bias[:] = torch.tensor([4.0, 0, 0, 0, 0, 8.0])
    step_dir = tmp_path / "run" / "checkpoints" / "step_000000007"
    torch.save({"state_dict": model.state_dict(), "step": 7, "ema": False}, step_dir / "generator.pt")
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", (rng.standard_normal(48000) * 0.1).astype(np.float32), 48000)
    sf.write(tmp_path / "b.flac", (rng.standard_normal((44100, 2)) * 0.1).astype(np.float32), 44100)

    enh = Enhancer(load_generator(tmp_path / "run"), device="cpu")
    p = enh.guess(tmp_path / "b.flac", seconds=0.5)
    assert list(p) == list(CLASSES) and sum(p.values()) == pytest.approx(1.0)
    assert max(p, key=p.get) == "wsola"

    sys.path.insert(0, str(ROOT / "launch"))
    import enhance

    assert enhance.main(["--checkpoint", str(tmp_path / "run"), "--quiet", "-o", str(tmp_path / "out"),
                         str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]) == 0
    err = capsys.readouterr().err
    for name in ("a.wav", "b.flac"):
        assert f"{name}: the model takes it for a wsola round trip 98%, clean input 2%, " in err, err
    assert (tmp_path / "out" / "a.wav").is_file() and (tmp_path / "out" / "b.flac").is_file()

    write_checkpoint(tmp_path / "plain", {**TINY_DAC, "residual": True, "output_activation": "none",
                                          "band_gain": {**band_gain, "detect": None}})
    assert enhance.main(["--checkpoint", str(tmp_path / "plain"), "--quiet", "-o", str(tmp_path / "out2"),
                         str(tmp_path / "a.wav")]) == 0
    assert "takes it for" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="no degradation classifier"):
        Enhancer(load_generator(tmp_path / "plain"), device="cpu").guess(tmp_path / "a.wav")
