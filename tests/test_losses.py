"""Reconstruction losses: parity with DAC's mel loss, hand-computed values, weights."""
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import DEMO_AUDIO

from gan.dsp.audio import read_audio
from gan.config import LossConfig, LossWeights, MelLossConfig
from gan.losses.reconstruction import (GeneratorReconstruction, MRSTFTLoss, MultiScaleMelLoss, l1_loss, mel_filterbank, si_sdr,
                        si_sdr_loss)


def _dac_mel(cfg: MelLossConfig):
    from dac.nn.loss import MelSpectrogramLoss

    return MelSpectrogramLoss(
        n_mels=cfg.n_mels, window_lengths=cfg.window_lengths, clamp_eps=cfg.clamp_eps, mag_weight=cfg.mag_weight,
        log_weight=cfg.log_weight, pow=cfg.pow, mel_fmin=cfg.mel_fmin, mel_fmax=cfg.mel_fmax,
    )


def _dac_value_and_grads(cfg, est, ref, sr=48000):
    """DAC's loss on AudioSignals, and its gradients w.r.t. est and ref."""
    from audiotools import AudioSignal

    est, ref = est.clone().requires_grad_(True), ref.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = _dac_mel(cfg)(AudioSignal(est, sr), AudioSignal(ref, sr))
    loss.backward()
    return loss.detach(), est.grad, ref.grad


def _ours_value_and_grads(cfg, est, ref, sr=48000):
    est, ref = est.clone().requires_grad_(True), ref.clone().requires_grad_(True)
    loss = MultiScaleMelLoss(cfg, sr)(est, ref)
    loss.backward()
    return loss.detach(), est.grad, ref.grad


@pytest.fixture(scope="module")
def music():
    """Real stereo audio as a batch of two mono items (2, 1, 8192), with a silent stretch."""
    audio, _ = read_audio(DEMO_AUDIO / "ambi_choir.flac")
    x = torch.from_numpy(audio[:, 20000:28192]).unsqueeze(1).clone()
    x[..., 6000:7000] = 0.0  # exact zeros: zero STFT magnitudes and clamped mels
    return x


def _assert_close(a, b, rel):
    scale = b.abs().max().clamp(min=1e-12)
    assert (a - b).abs().max() <= rel * scale, f"max diff {float((a - b).abs().max())} vs scale {float(scale)}"


def test_mel_equals_dac_defaults_on_music(music):
    ref = music
    est = 0.7 * music + 0.01 * torch.randn(music.shape, generator=torch.Generator().manual_seed(0))
    cfg = MelLossConfig()
    ours, g_est, g_ref = _ours_value_and_grads(cfg, est, ref)
    dac, d_est, d_ref = _dac_value_and_grads(cfg, est, ref)
    assert torch.isclose(ours, dac, rtol=1e-5, atol=0)
    _assert_close(g_est, d_est, 1e-4)
    _assert_close(g_ref, d_ref, 1e-4)  # the reference side is differentiable too


def test_mel_equals_dac_other_settings():
    g = torch.Generator().manual_seed(1)
    est, ref = torch.randn(3, 1, 3000, generator=g), torch.randn(3, 1, 3000, generator=g)
    ref[0] = 0.0  # all-silent reference item
    # fmax above Nyquist puts filter weight on the Nyquist bin, whose FFT adjoint differs from the others
    cfg = MelLossConfig(n_mels=[8, 64], window_lengths=[64, 512], clamp_eps=1e-3, mag_weight=0.5,
                        log_weight=2.0, pow=2.0, mel_fmin=[50.0, 0.0], mel_fmax=[16000.0, 30000.0])
    ours, g_est, _ = _ours_value_and_grads(cfg, est, ref, sr=44100)
    dac, d_est, _ = _dac_value_and_grads(cfg, est, ref, sr=44100)
    assert torch.isclose(ours, dac, rtol=1e-5, atol=0)
    _assert_close(g_est, d_est, 1e-4)


def test_mel_filterbank_is_librosas_bit_for_bit():
    import librosa

    for sr, n_fft, n_mels, fmin, fmax in [(48000, 32, 5, 0.0, None), (48000, 2048, 320, 0.0, None),
                                          (44100, 512, 80, 50.0, 16000.0), (16000, 256, 40, 0.0, 4000.0)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns about the empty filters below
            expect = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        got = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
        assert got.dtype == expect.dtype and np.array_equal(got, expect)
    # at 48 kHz DAC's two smallest scales each have an empty lowest filter (no FFT bin in it)
    assert [int((mel_filterbank(48000, w, n).sum(1) == 0).sum()) for w, n in [(32, 5), (64, 10), (128, 20)]] == [1, 1, 0]


def test_mel_hand_value_for_a_scaled_copy():
    # mel(10 x) = 10 mel(x), so every log10 difference is exactly 1 where the mel is above the
    # clamp, and 0 in the empty filters (1 of 5 at window 32, 1 of 10 at window 64):
    # 7 scales -> 7 - 1/5 - 1/10. pow multiplies the log term.
    x = torch.randn(2, 1, 4096, generator=torch.Generator().manual_seed(2))
    assert float(MultiScaleMelLoss()(10 * x, x)) == pytest.approx(7.0 - 0.2 - 0.1, abs=1e-5)
    cfg = MelLossConfig(n_mels=[40, 80], window_lengths=[256, 512], pow=2.0, mel_fmin=[0.0] * 2, mel_fmax=[None] * 2)
    assert float(MultiScaleMelLoss(cfg)(x, 10 * x)) == pytest.approx(4.0, abs=1e-5)
    assert float(MultiScaleMelLoss()(x, x)) == 0.0


def test_mel_is_float32_under_bf16_autocast_and_channels_fold_into_batch(music):
    loss = MultiScaleMelLoss()
    est = 0.5 * music
    expect = loss(est, music)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(est.bfloat16(), music)
    assert got.dtype == torch.float32
    assert torch.isclose(got, loss(est.bfloat16().float(), music))  # same as fp32 on the rounded input
    stereo = loss(est.reshape(1, 2, -1), music.reshape(1, 2, -1))
    assert torch.isclose(stereo, expect, rtol=1e-6)


def test_mel_buffers_follow_the_module_and_stay_out_of_the_state_dict():
    from scipy.signal import get_window  # audiotools' window source

    loss = MultiScaleMelLoss()
    assert loss.state_dict() == {}
    assert loss.fb_t_6.shape == (1025, 320)
    assert torch.equal(loss.window_3, torch.from_numpy(get_window("hann", 256)).float())
    x, y = torch.randn(2, 1, 4096), torch.randn(2, 1, 4096)
    expect = loss(x, y)
    assert loss.to(torch.float64).fb_t_0.dtype == torch.float64  # moved like any buffer
    assert loss(x, y).dtype == torch.float32 and torch.isclose(loss(x, y), expect)  # still computed in float32


def test_mel_errors_name_the_problem():
    with pytest.raises(ValueError, match="too short"):
        MultiScaleMelLoss()(torch.zeros(1, 1, 1000), torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match="differ"):
        MultiScaleMelLoss()(torch.zeros(1, 1, 4096), torch.zeros(1, 1, 4000))
    bad = MelLossConfig(n_mels=[10], window_lengths=[30], mel_fmin=[0.0], mel_fmax=[None])
    with pytest.raises(ValueError, match="multiple of 4"):
        MultiScaleMelLoss(bad)


@pytest.mark.slow
def test_mel_under_torch_compile_matches_eager():
    x = torch.randn(2, 1, 4096, generator=torch.Generator().manual_seed(3), requires_grad=True)
    y = torch.randn(2, 1, 4096, generator=torch.Generator().manual_seed(4))
    loss = MultiScaleMelLoss()
    eager = loss(x, y)
    (g_eager,) = torch.autograd.grad(eager, x)
    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)(x, y)
    (g_comp,) = torch.autograd.grad(compiled, x)
    assert torch.isclose(compiled, eager, rtol=1e-6)
    _assert_close(g_comp, g_eager, 1e-6)


def test_l1_hand_value():
    est = torch.tensor([[[1.0, -2.0, 0.5, 0.0]]])
    ref = torch.tensor([[[0.0, -1.0, 0.5, 2.0]]])
    assert float(l1_loss(est, ref)) == pytest.approx((1 + 1 + 0 + 2) / 4)


def test_si_sdr_hand_value_and_scale_invariance():
    ref = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    noise = torch.tensor([[0.5, 0.5, -0.5, -0.5]])  # zero mean, orthogonal to ref
    # target energy 4, noise energy 1 -> 10 log10(4) dB, whatever the estimate's gain
    assert float(si_sdr(ref + noise, ref)) == pytest.approx(10 * math.log10(4), abs=1e-5)
    assert float(si_sdr(3 * (ref + noise), ref)) == pytest.approx(10 * math.log10(4), abs=1e-5)
    assert float(si_sdr_loss(ref + noise, ref)) == pytest.approx(-10 * math.log10(4), abs=1e-5)


def test_si_sdr_matches_dac_per_item(music):
    from dac.nn.loss import SISDRLoss

    est = music + 0.1 * torch.randn(music.shape, generator=torch.Generator().manual_seed(5))
    ours = si_sdr(est, music)
    assert ours.shape == (2,)
    dac = -SISDRLoss(reduction="none")(music, est)  # DAC's first argument is the reference
    _assert_close(ours, dac.reshape(-1), 1e-5)


def test_mrstft_is_zero_on_identical_and_float32_under_autocast(music):
    loss = MRSTFTLoss([512, 256])
    assert float(loss(music, music)) == pytest.approx(0.0, abs=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(0.5 * music, music)
    assert value.dtype == torch.float32 and float(value) > 0.1


def test_reconstruction_weights_and_skipped_terms(music):
    est = (0.8 * music).requires_grad_(True)
    rec = GeneratorReconstruction(LossConfig(), LossWeights(mel=15.0, l1=0.5, mrstft=0.0))
    assert rec.mrstft is None  # weight 0: not even built
    total, terms = rec(est, music)
    assert set(terms) == {"mel", "l1"}
    mel = MultiScaleMelLoss()(est, music)
    assert torch.isclose(terms["mel"], mel) and not terms["mel"].requires_grad
    assert torch.isclose(terms["l1"], l1_loss(est, music))
    assert torch.isclose(total, 15.0 * mel + 0.5 * terms["l1"])
    total.backward()
    assert est.grad is not None
    only_l1 = GeneratorReconstruction(LossConfig(), LossWeights(mel=0.0, l1=1.0))
    assert only_l1.mel is None and set(only_l1(est, music)[1]) == {"l1"}
