"""Band gains from a degradation encoder (generators/band_gain.py): band weights, the identity start,
a known gain, the exact receptive field, the config section, and chunked = whole-file inference."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import generators
from gan.config import load_config
from generators.band_gain import BandGain, BandGainConfig, band_weights
from helpers import assert_chunked_equals_whole, enhancer
from tiny_configs import tiny_band_gain, tiny_dac_unet, tiny_wavunet

TINY_BAND = tiny_band_gain()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n_fft, n_bands", [(1024, 32), (64, 6), (2048, 80)])
def test_band_weights_sum_to_one_in_every_bin(n_fft, n_bands):
    w = band_weights(n_fft, n_bands)
    assert w.shape == (n_fft // 2 + 1, n_bands)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(n_fft // 2 + 1), rtol=0, atol=1e-6)
    assert (w.sum(dim=0) > 0).all()  # every band reaches some bin
    centres = (w * torch.arange(n_fft // 2 + 1)[:, None]).sum(0) / w.sum(0)
    assert (centres.diff() > 0).all()  # bands run low to high


def test_starts_as_the_identity_exactly():
    torch.manual_seed(0)
    m = BandGain(TINY_BAND)
    x = torch.randn(2, 1, 999) * 0.3
    assert torch.equal(m(x), x)


@pytest.mark.parametrize("db", [6.0, -12.0, 30.0])
def test_a_constant_band_gain_is_that_gain_bounded(db):
    """Every band at g dB scales the signal by g dB (the ISTFT of a Hann STFT at hop n/4 is exact), and
    a gain past max_gain_db is bounded by the tanh to less than the bound."""
    m = BandGain(TINY_BAND)
    with torch.no_grad():
        m.to_gain[-1].bias.fill_(db * math.log(10) / 20)
    x = torch.randn(1, 1, 2000, dtype=torch.float64).float()
    limit = TINY_BAND.max_gain_db * math.log(10) / 20
    expected = math.exp(limit * math.tanh(db * math.log(10) / 20 / limit))
    torch.testing.assert_close(m(x), x * expected, rtol=1e-4, atol=1e-5)
    assert expected < 10 ** (TINY_BAND.max_gain_db / 20)


def test_without_magnitude_the_features_ignore_a_gain_on_the_input():
    """``magnitude: false`` drops log|X| (5 -> 4 feature planes) and keeps the phase planes as they
    are; those see the spectrum only through the presence weight, so a 20 dB gain on the input leaves
    them unchanged, while the magnitude plane moves by log(10) / 4. A trained module without it
    then gives a louder input the same band gains: its output scales with its input."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 2000)
    full, phase_only = BandGain(TINY_BAND), BandGain(dataclasses.replace(TINY_BAND, magnitude=False))
    assert phase_only.encoder[0].in_channels == 4 and full.encoder[0].in_channels == 5
    spec = full.stft(x)
    assert phase_only.features(spec).shape == (1, 4, TINY_BAND.n_fft // 2 + 1, 2000 // TINY_BAND.hop + 1)
    torch.testing.assert_close(phase_only.features(spec), full.features(spec)[:, 1:], rtol=0, atol=0)
    f_quiet, f_loud = (full.features(full.stft(x * g)) for g in (1.0, 10.0))
    torch.testing.assert_close(f_loud[:, 1:], f_quiet[:, 1:], rtol=0, atol=1e-4)
    assert (f_loud[:, 0] - f_quiet[:, 0]).median() == pytest.approx(math.log(10) / 4, abs=1e-3)
    with torch.no_grad():  # a module that is no longer the identity: random last conv
        for m in (full, phase_only):
            m.to_gain[-1].parametrizations.weight.original0.fill_(1.0)
    y = phase_only(x)
    assert not torch.allclose(y, x, atol=1e-3)
    torch.testing.assert_close(phase_only(10 * x), 10 * y, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(full(10 * x), 10 * full(x), rtol=1e-3, atol=1e-3)


def test_silence_stays_silent():
    torch.manual_seed(0)
    m = BandGain(TINY_BAND)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(m(torch.zeros(1, 1, 500)), torch.zeros(1, 1, 500))


def _random_start(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


WITH_BAND_GAIN = {
    "dac_unet": tiny_dac_unet(dilations=[1], residual=True, gain_path=True, output_activation="none",
                              band_gain=TINY_BAND),
    "wavunet": tiny_wavunet(residual=True, gain_path=True, band_gain=TINY_BAND),
}


@pytest.mark.parametrize("where", ["band_gain", "dac_unet", "wavunet"])
def test_receptive_field_matches_gradient_support(where):
    """The analytic input span of output samples equals where their gradient is non-zero."""
    cfg = WITH_BAND_GAIN["dac_unet" if where == "band_gain" else where]
    g = _random_start(generators.build_generator(cfg)).double()
    model, period = (g.band_gain, TINY_BAND.hop) if where == "band_gain" else (g, cfg.total_stride)
    span = model.input_span((0, 0))
    length = 4 * (span[1] - span[0]) + 8 * period
    mid = length // 2 - (length // 2) % period
    for t in (0, 5, period - 1):
        x = torch.randn(1, 1, length, dtype=torch.float64, requires_grad=True)
        model(x)[0, 0, mid + t].backward()
        support = x.grad[0, 0].nonzero().flatten()
        assert (int(support.min()), int(support.max())) == model.input_span((mid + t, mid + t))


def test_total_stride_is_a_multiple_of_the_hop():
    cfg = tiny_dac_unet(residual=True, band_gain=BandGainConfig(hop=256))
    assert cfg.unet_stride == 16 and cfg.total_stride == 256
    cfg = tiny_wavunet(residual=True, band_gain=BandGainConfig(hop=256))
    assert cfg.unet_stride == 16 and cfg.total_stride == 256


@pytest.mark.parametrize("name", list(WITH_BAND_GAIN))
def test_chunked_equals_whole(name):
    cfg = WITH_BAND_GAIN[name]
    model = _random_start(generators.build_generator(cfg))
    assert_chunked_equals_whole(enhancer(model, cfg, chunk_seconds=1600 / 48000, batch_size=2), model)


def test_config_section_and_its_errors():
    cfg = load_config("cpu", ["generator.band_gain={n_bands: 16}"])
    assert cfg.generator.band_gain == BandGainConfig(n_bands=16)
    with pytest.raises(ValueError, match="band_gain.hop"):
        BandGainConfig(n_fft=1024, hop=300)
    for tiny in (tiny_dac_unet, tiny_wavunet):
        with pytest.raises(ValueError, match="band_gain: needs residual"):
            tiny(band_gain=BandGainConfig())


def test_detection_reports_the_gain_per_shifter_and_its_auc():
    """``bench.py curve``'s detection: a constant band gain of 6 dB is 6 dB for every shifter, and
    cannot separate anything (AUC 0.5)."""
    from types import SimpleNamespace

    from gan.bench.curve import detection

    m = BandGain(TINY_BAND)
    with torch.no_grad():
        m.to_gain[-1].bias.fill_(6 * math.log(10) / 20)
    limit = TINY_BAND.max_gain_db * math.log(10) / 20
    db = 20 / math.log(10) * limit * math.tanh(6 * math.log(10) / 20 / limit)
    torch.manual_seed(0)
    examples = [SimpleNamespace(shifter=name, degraded=torch.randn(800).numpy())
                for name in ("torchaudio", "wsola", "torchaudio", "none")]
    out = detection(m, examples)
    assert out["auc"] == 0.5
    assert out["mean_gain_db"] == {"torchaudio": round(db, 2), "wsola": round(db, 2), "none": round(db, 2)}


def test_the_curve_plot_draws_every_run(tmp_path):
    """``bench.py curve --plot``: three lines per run in each metric's panel, for more runs than a
    short colour list would hold."""
    from gan.bench.curve import plot

    scores = {f"{name}+12": {m: {"model": 1.0, "level": 1.0, "beyond": 0.5} for m in ("mel", "lsd", "mrstft")}
              for name in ("torchaudio", "librosa", "rubberband", "wsola", "signalsmith")}
    runs = {f"run{i}": {"params": 1e6, "points": [{"step": s, "train_seconds": 60.0 * s, "scores": scores}
                                                  for s in (1, 2)]} for i in range(6)}
    fig = plot({"runs": runs}, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 0
    for ax in fig.axes:
        assert len(ax.lines) == 6 * 3 + 1  # and the zero line
