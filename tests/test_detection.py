"""Degradation detection (generators/detection.py, gan/losses/detection.py): the classifier's loss, its
classes against the data's labels, a blind audio path, the config's refusals, the trainer reaching it
(one process and two), what bench.py curve and enhance.py report."""
from __future__ import annotations

import math

import pytest
import torch

from gan.config import ConfigError
from gan.data.loader import SHIFTER_LABELS
from generators.band_gain import BandGain, BandGainConfig
from gan.losses.detection import DetectionLoss
from generators.detection import CLASSES, Detection, DetectionConfig, detecting
from helpers import make_trainer
from tiny_configs import tiny_band_gain

TINY = tiny_band_gain(detect=DetectionConfig())


pytestmark = pytest.mark.usefixtures("one_thread")


def test_classes_are_the_data_labels():
    assert CLASSES[0] == "clean input"
    assert {name: CLASSES.index(name) for name in SHIFTER_LABELS} == SHIFTER_LABELS


def test_loss_is_the_cross_entropy_over_rows_and_frames_without_silence():
    torch.manual_seed(0)
    loss = DetectionLoss()
    logits = torch.randn(3, len(CLASSES), 4)
    labels = torch.tensor([0, 5, 2])
    degraded = torch.randn(3, 1, 100)
    log_p = logits.log_softmax(dim=1)  # (B, L, F)
    by_hand = -(log_p[0, 0].mean() + log_p[1, 5].mean() + log_p[2, 2].mean()) / 3
    torch.testing.assert_close(loss(logits, labels, degraded), by_hand)
    degraded[2] = 0  # digital silence shows no round trip: left out
    torch.testing.assert_close(loss(logits, labels, degraded), -(log_p[0, 0].mean() + log_p[1, 5].mean()) / 2)
    assert loss(logits, labels, torch.zeros(3, 1, 100)).item() == 0.0
    # uniform logits: ln L nats whatever the labels
    assert loss(torch.zeros(3, len(CLASSES), 4), labels, torch.ones(3, 1, 10)).item() == pytest.approx(
        math.log(len(CLASSES)))
    p = Detection(DetectionConfig(), channels=3).probabilities(logits)
    assert p.shape == (3, len(CLASSES)) and torch.allclose(p.sum(1), torch.ones(3))


def test_the_audio_path_stays_blind():
    """The classifier is a head on the context: with the same weights the output equals a band gain
    without it; ``classify`` returns its logits from the same encoding, as ``BandGain.classify`` does."""
    torch.manual_seed(0)
    plain = BandGain(tiny_band_gain())
    m = BandGain(TINY)
    missing = m.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("detection.") for k in missing)
    with torch.no_grad():
        for net in (plain, m):
            net.to_gain[-1].parametrizations.weight.original0.fill_(0.5)
    x = torch.randn(3, 1, 800) * 0.3
    y, logits = m(x, classify=True)
    torch.testing.assert_close(y, plain(x), rtol=0, atol=0)
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)
    assert logits.shape == (3, len(CLASSES), 800 // 16 + 1) and logits.requires_grad
    torch.testing.assert_close(m.classify(x), logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no degradation classifier"):
        plain(x, classify=True)


def test_the_config_refuses_labels_that_do_not_mean_the_round_trip(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="condition and detect"):
        BandGainConfig(condition={}, detect=DetectionConfig())
    for data in ("data.unknown_fraction=0.5", "data.remix_fraction=0.2"):
        name = data.split("=")[0]
        with pytest.raises(ConfigError, match=rf"band_gain.detect: set {name}=0; the classifier learns"):
            make_trainer(tiny_data, tmp_path / "bad", overrides=[
                "generator.residual=true", "generator.output_activation=none",
                "generator.band_gain={detect: {}}", "data.unknown_fraction=0", data])
    with pytest.raises(ConfigError, match="loss_weights.detect: must be > 0"):
        make_trainer(tiny_data, tmp_path / "bad2", overrides=[
            "generator.residual=true", "generator.output_activation=none", "generator.band_gain={detect: {}}",
            "data.unknown_fraction=0", "loss_weights.detect=0"])


def test_training_reaches_the_classifier_and_logs_its_loss(tiny_data, tmp_path):
    from gan.data.loader import make_train_loader

    tr = make_trainer(tiny_data, tmp_path / "run", overrides=[
        "generator.residual=true", "generator.output_activation=none", "generator.band_gain={detect: {}}",
        "data.unknown_fraction=0", "loss_weights.detect=2"])
    assert detecting(tr.cfg.generator)
    head = tr.G.band_gain.detection.head
    before = {k: v.clone() for k, v in head.state_dict().items()}
    batch = next(iter(make_train_loader(tr.cache_dir, tr.cfg.data, 0, 1)))
    batch["family"][:] = torch.tensor([SHIFTER_LABELS["torchaudio"], 0])
    logs = tr.train_step([batch])
    assert 0 < logs["train/g/detect"] < 2 * math.log(len(CLASSES))
    w = tr.cfg.loss_weights
    reconstruction = sum(getattr(w, n) * logs[f"train/g/{n}"] for n in ("mel", "l1", "mrstft", "lsd") if getattr(w, n))
    assert logs["train/g/total"] == pytest.approx(reconstruction + 2 * logs["train/g/detect"], rel=1e-5)
    assert any(not torch.equal(before[k], v) for k, v in head.state_dict().items())
    tr.close()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_the_classifier(tiny_data, tmp_path):
    """DDP (gloo, find_unused_parameters on the CPU) reaches the head through the logits G returns, in both
    stages (the adversarial one reuses the D step's G pass)."""
    import os
    import yaml

    from conftest import ROOT
    from helpers import PY, free_port, run_launch, tiny_dict

    d = tiny_dict(*tiny_data, max_steps=3, pretrain_steps=2, save_every=3)  # the last step adversarial
    d["generator"].update(residual=True, output_activation="none", band_gain={"detect": {}})
    d["data"]["unknown_fraction"] = 0.0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    cmd = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(ROOT / "launch" / "train.py"), "--config", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "r")]
    out = run_launch(cmd, fresh=(tmp_path / "r",), cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "r" / "checkpoints" / "step_000000003").is_dir()


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
        loss = DetectionLoss()(m(x, classify=True)[1], labels, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * math.log(len(CLASSES))
    logits = m.classify(torch.cat([tones, torch.randn(4, 1, 800) * 0.5]))
    assert (m.detection.probabilities(logits).argmax(1) == labels).all()


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

    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 48000)
    sf.write(tmp_path / "short.wav", np.zeros(100, np.float32), 384000)  # 13 samples at 48 kHz
    sf.write(tmp_path / "hi.wav", (rng.standard_normal(96000) * 0.1).astype(np.float32), 96000)
    assert enh.guess(tmp_path / "empty.wav") is None and enh.guess(tmp_path / "short.wav") is None
    assert sum(enh.guess(tmp_path / "hi.wav", seconds=0.25).values()) == pytest.approx(1.0)
    assert enhance.main(["--checkpoint", str(tmp_path / "run"), "--quiet", "-o", str(tmp_path / "out3"),
                         str(tmp_path / "empty.wav")]) == 0
    assert "takes it for" not in capsys.readouterr().err

    write_checkpoint(tmp_path / "plain", {**TINY_DAC, "residual": True, "output_activation": "none",
                                          "band_gain": {**band_gain, "detect": None}})
    assert enhance.main(["--checkpoint", str(tmp_path / "plain"), "--quiet", "-o", str(tmp_path / "out2"),
                         str(tmp_path / "a.wav")]) == 0
    assert "takes it for" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="no degradation classifier"):
        Enhancer(load_generator(tmp_path / "plain"), device="cpu").guess(tmp_path / "a.wav")
