import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from gan.config import ConfigError, DegradeConfig
from gan.dsp.shifters import SHIFTERS, apply_shift, check_shifters, choose_shifter, round_trip, shift_torchaudio

SR = 48000
NOISE = np.random.default_rng(0).standard_normal(12001).astype(np.float32) * 0.1  # 0.25 s, odd length


@pytest.fixture(autouse=True)
def one_thread():
    """Short FFTs run faster on one thread, and much faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def top_band_fraction(y: np.ndarray, shift: int, sr: int = SR) -> float:
    """Share of the energy between Nyquist / 2^(|n|/12) and 0.95 Nyquist."""
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / sr)
    band = (freqs >= sr / 2 / 2 ** (abs(shift) / 12)) & (freqs < 0.95 * sr / 2)
    return float(power[band].sum() / power.sum())


@pytest.mark.parametrize("shifter", sorted(SHIFTERS))
def test_round_trip_keeps_shape_type_and_is_deterministic(shifter):
    cfg = DegradeConfig()
    y = round_trip(NOISE, 11, cfg, shifter)
    assert isinstance(y, np.ndarray) and y.shape == NOISE.shape and y.dtype == np.float32
    assert np.isfinite(y).all() and not np.allclose(y, NOISE, atol=1e-3)
    assert np.array_equal(y, round_trip(NOISE, 11, cfg, shifter))
    stereo = torch.from_numpy(np.stack([NOISE, -NOISE]))  # (2, T) tensor in, (2, T) tensor out
    z = round_trip(stereo, -10, cfg, shifter)
    assert isinstance(z, torch.Tensor) and z.shape == stereo.shape


def test_torchaudio_shifter_equals_torchaudio_pitch_shift_for_octaves():
    # torchaudio's own function is usable (small resampling kernel) exactly at octaves; ours runs its
    # phase vocoder in double precision (no drift on long files), torchaudio's in float32: -67 dB apart
    x = torch.from_numpy(NOISE[None])
    for n in (12, -12):
        ours = shift_torchaudio(x, 96000, n, DegradeConfig(n_fft=1024))
        ref = AF.pitch_shift(x, 96000, n, n_fft=1024)
        assert 10 * torch.log10((ours - ref).square().sum() / ref.square().sum()) < -60
        double = AF.pitch_shift(x.double(), 96000, n, n_fft=1024).float()  # the library, in double: the same
        torch.testing.assert_close(ours, double, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shift", [-12, -11, -10, 10, 11, 12])
def test_oversampled_round_trip_keeps_the_top_band(shift):
    before = top_band_fraction(NOISE, shift)
    kept = top_band_fraction(round_trip(NOISE, shift, DegradeConfig(), "torchaudio"), shift) / before
    assert kept > 0.8
    plain = top_band_fraction(round_trip(NOISE, shift, DegradeConfig(oversample_rate=SR), "torchaudio"), shift)
    if shift > 0:  # up first at 48 kHz: the top band is pushed past Nyquist and lost
        assert plain / before < 0.05
    else:
        assert plain / before > 0.8


def test_signalsmith_round_trip_keeps_the_top_band():
    before = top_band_fraction(NOISE, 12)
    assert top_band_fraction(round_trip(NOISE, 12, DegradeConfig(), "signalsmith"), 12) / before > 0.8
    assert top_band_fraction(round_trip(NOISE, 12, DegradeConfig(oversample_rate=SR), "signalsmith"), 12) / before < 0.05


@pytest.mark.parametrize("shifter", sorted(SHIFTERS))
def test_apply_shift_moves_a_tone_by_the_interval_at_any_rate(shifter):
    sr = 44100
    t = np.arange(sr // 2) / sr
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    for shift, expect in [(12, 2000.0), (-12, 500.0), (7, 1000 * 2 ** (7 / 12))]:
        y = apply_shift(tone, sr, shift, DegradeConfig(), shifter)
        assert y.shape == tone.shape
        spectrum = np.abs(np.fft.rfft(y[2048:-2048]))
        peak = np.argmax(spectrum) * sr / (len(y) - 4096)
        # bin width ~2.3 Hz; pedalboard's Rubber Band lands 29 cents sharp an octave down (508 Hz, any length)
        assert abs(peak - expect) < (0.02 * expect if shifter == "rubberband" else 8.0)
    # a 15 kHz tone shifted up an octave lands above 22.05 kHz: the low-pass removes it
    high = (0.5 * np.sin(2 * np.pi * 15000 * t)).astype(np.float32)
    y = apply_shift(high, sr, 12, DegradeConfig(), shifter)
    assert np.mean(y[2048:-2048] ** 2) < 1e-3 * np.mean(high**2)


def test_apply_shift_by_zero_is_the_identity():
    assert np.array_equal(apply_shift(NOISE, SR, 0, DegradeConfig()), NOISE)


def test_choose_shifter_is_deterministic_and_follows_the_weights():
    cfg = DegradeConfig(shifters={"torchaudio": 1.0, "signalsmith": 3.0})
    picks = [choose_shifter(cfg, f"file{i}.wav", 12) for i in range(2000)]
    assert picks == [choose_shifter(cfg, f"file{i}.wav", 12) for i in range(2000)]
    assert 0.70 < picks.count("signalsmith") / len(picks) < 0.80
    only = DegradeConfig(shifters={"torchaudio": 0.0, "signalsmith": 1.0})
    assert {choose_shifter(only, f"f{i}", -10) for i in range(50)} == {"signalsmith"}


def test_unknown_shifter_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"data\.degrade\.shifters: unknown shifter 'sox'"):
        check_shifters(DegradeConfig(shifters={"sox": 1.0}))
    with pytest.raises(ConfigError, match="shifter 'nope'"):
        round_trip(NOISE, 12, DegradeConfig(), "nope")
