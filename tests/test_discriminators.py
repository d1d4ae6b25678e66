"""Discriminators: registry, names, shape contract, gradients, input normalisation, DAC parity."""
from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch

import discriminators
from discriminators import MPDConfig, MRDConfig, MSDConfig, build_discriminator, load_dac_weights
from discriminators.common import normalize_peak, reflect_pad
from gan.config import ConfigError, config_from_dict, load_config
from tiny_configs import tiny_discriminators, tiny_model_sections, tiny_mpd, tiny_mrd, tiny_msd

FAMILIES = {"mpd": tiny_mpd(), "mrd": tiny_mrd(), "msd": tiny_msd()}


pytestmark = pytest.mark.usefixtures("one_thread")


def _all_maps(out) -> list[torch.Tensor]:
    return [t for logits, fmaps in out for t in [*fmaps, logits]]


# --------------------------------------------------------------------------- registry


def test_registry_names_and_config_classes():
    assert sorted(discriminators.REGISTRY) == ["mpd", "mrd", "msd"]
    for name, (cls, cfg_cls) in discriminators.REGISTRY.items():
        assert dataclasses.fields(cfg_cls)[0].name == "name" and cfg_cls().name == name
        assert type(cls(FAMILIES[name])) is cls


def test_unknown_and_duplicate_discriminators():
    bad = copy.copy(tiny_mpd())
    bad.name = "msstftd"
    with pytest.raises(ValueError, match=r"'msstftd'.*\['mpd', 'mrd', 'msd'\]"):
        build_discriminator([bad])
    with pytest.raises(ValueError, match=r"\['mpd_3'\] appear twice"):
        build_discriminator([tiny_mpd(), tiny_mpd(periods=[3, 5])])
    with pytest.raises(ValueError, match="at least one"):
        build_discriminator([])


def test_config_loader_builds_and_checks_discriminator_sections():
    base = {"data": {"audio_dir": "a", "cache_dir": "c", "segment_length": 1024}, "trainer": {"max_steps": 10},
            **tiny_model_sections()}
    assert config_from_dict(base).discriminators == tiny_discriminators()
    with pytest.raises(ConfigError, match=r"discriminators.1: band_edges"):
        config_from_dict(base, ["discriminators.1.band_edges=[0.0, 0.5, 0.4, 1.0]"])
    with pytest.raises(ConfigError, match=r"discriminators.1: window_lengths: window 16 leaves a band"):
        config_from_dict(base, ["discriminators.1.window_lengths=[16]"])


def test_names_follow_the_config_order():
    d = build_discriminator([tiny_mrd(), tiny_mpd(), tiny_msd()])
    assert d.names == ["mrd_256", "mrd_128", "mpd_2", "mpd_3", "msd_1", "msd_2"]


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("length", [1, 777, 16384 + 3])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_shape_contract(family, length):
    torch.manual_seed(0)
    d = build_discriminator([FAMILIES[family]])
    with torch.no_grad():
        out = d(torch.randn(3, 1, length))
    assert len(out) == len(d.names)
    for logits, fmaps in out:
        assert logits.shape[:2] == (3, 1) and logits.numel() > 0
        assert len(fmaps) >= 3 and all(f.shape[0] == 3 for f in fmaps)
        assert all(torch.isfinite(t).all() for t in [logits, *fmaps])


def test_frame_counts():
    """MPD folds ceil((T+1)/p) rows (DAC pads a full period when p divides T); MRSTFT has ceil(T/hop) frames."""
    d = build_discriminator([tiny_mpd(), tiny_mrd()])
    with torch.no_grad():
        out = dict(zip(d.names, d(torch.randn(1, 1, 1000))))
    # mpd_2: 1000 -> 1002 -> 501 rows -> three stride-3 convs: 167, 56, then stride 1
    assert out["mpd_2"][0].shape == (1, 1, 56, 2)
    assert out["mpd_3"][0].shape == (1, 1, 38, 3)  # 1001 / 3 = 334 -> 112 -> 38
    assert out["mrd_256"][1][0].shape[2] == 16  # ceil(1000 / 64) frames
    assert out["mrd_128"][1][0].shape[2] == 32  # ceil(1000 / 32)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradients_reach_every_parameter_and_the_input(family):
    torch.manual_seed(0)
    d = build_discriminator([FAMILIES[family]])
    x = torch.randn(2, 1, 2000, requires_grad=True)
    sum(t.pow(2).mean() for t in _all_maps(d(x))).backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_deterministic_with_a_seed():
    x = torch.randn(1, 1, 1500)
    outs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(torch.cat([t.flatten() for t in _all_maps(build_discriminator(tiny_discriminators())(x))]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


# --------------------------------------------------------------------------- input normalisation


def test_normalize_peak_exact_values():
    x = torch.tensor([[[1.0, 3.0, 2.0, 6.0]]])  # mean 3 -> [-2, 0, -1, 3], peak 3
    expected = 0.8 * torch.tensor([[[-2.0, 0.0, -1.0, 3.0]]]) / (3.0 + 1e-9)
    torch.testing.assert_close(normalize_peak(x), expected)


@pytest.mark.parametrize("normalize", [True, False])
def test_normalisation_makes_d_blind_to_gain_and_dc(normalize):
    torch.manual_seed(0)
    d = build_discriminator([tiny_mpd(normalize=normalize), tiny_mrd(normalize=normalize)])
    x = torch.randn(2, 1, 1200)
    with torch.no_grad():
        a = torch.cat([t.flatten() for t in _all_maps(d(x))])
        b = torch.cat([t.flatten() for t in _all_maps(d(3.0 * x + 0.25))])
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5) == normalize


def test_reflect_pad_extends_numpy_reflect():
    x = torch.arange(3.0).view(1, 1, 3)
    torch.testing.assert_close(reflect_pad(x, 1, 2), torch.nn.functional.pad(x, (1, 2), mode="reflect"))
    for left, right in [(4, 5), (0, 7), (3, 0)]:  # pads >= the length: torch refuses, numpy keeps reflecting
        expected = np.pad(np.arange(3.0), (left, right), mode="reflect")
        assert reflect_pad(x, left, right).flatten().tolist() == expected.tolist()
    assert reflect_pad(torch.tensor([[[7.0]]]), 2, 3).flatten().tolist() == [7.0] * 6


# --------------------------------------------------------------------------- parity with DAC


@pytest.fixture(scope="module")
def dac_pair():
    """DAC's Discriminator with MPD (2, 3), MSD (1, 2), MRD (2048, 512) and ours with its weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dac.model.discriminator import Discriminator

        torch.manual_seed(0)
        ref = Discriminator(rates=[1, 2], periods=[2, 3], fft_sizes=[2048, 512], sample_rate=48000)
    ours = build_discriminator([MPDConfig(periods=[2, 3]), MSDConfig(rates=[1, 2]),
                                MRDConfig(window_lengths=[2048, 512])])
    load_dac_weights(ours, ref)
    return ref, ours


def test_parity_with_dac(dac_pair):
    """Outputs, feature maps and input gradients equal DAC's.

    T = 2010 is a multiple of both periods (DAC then pads a whole period) and of no STFT
    hop (the STFT pads up to a multiple); the input has DC and a peak away from 0.8.
    """
    ref, ours = dac_pair
    torch.manual_seed(1)
    x = 0.3 * torch.randn(2, 1, 2010) + 0.05
    x_ref = x.clone().requires_grad_(True)
    x_ours = x.clone().requires_grad_(True)
    out_ref, out = ref(x_ref), ours(x_ours)
    assert len(out) == len(out_ref) == len(ours.names)
    for name, fmaps_ref, (logits, fmaps) in zip(ours.names, out_ref, out):
        assert len(fmaps) + 1 == len(fmaps_ref), name
        for mine, theirs in zip([*fmaps, logits], fmaps_ref):
            assert mine.shape == theirs.shape, name
            scale = theirs.abs().max().item()
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5 * scale, msg=name)
    sum(t.pow(2).mean() for fm in out_ref for t in fm).backward()
    sum(t.pow(2).mean() for t in _all_maps(out)).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-3, atol=1e-5 * x_ref.grad.abs().max().item())


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("config", ["gan_dac", "gan_wavunet"])
def test_shipped_configs_build(config):
    cfg = load_config(config)
    with torch.device("meta"):
        d = build_discriminator(cfg.discriminators)
    assert d.names == ["mpd_2", "mpd_3", "mpd_5", "mpd_7", "mpd_11", "mrd_2048", "mrd_1024", "mrd_512"]
    mpd, mrd = (sum(p.numel() for p in fam.parameters()) for fam in d.families)
    assert (mpd, mrd) == (41_105_770, 1_413_990)  # as DAC's MPD x 5 and MRD x 3
