"""Generators: registry, shape contract, gradients, determinism, DAC parity, receptive fields."""
from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch

import generators
from gan.config import ConfigError, config_from_dict, load_config
from generators import DacUNetConfig, WavUNetConfig, build_generator
from generators.layers import DownBlock, ResidualUnit, Snake1d, UpBlock, from_dac_state_dict, fuse_activations
from tiny_configs import tiny_dac_unet, tiny_generators, tiny_model_sections, tiny_wavunet

TINY = tiny_generators()


pytestmark = pytest.mark.usefixtures("one_thread")


def _dac():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DAC's deprecated weight_norm
        from dac.model import dac as dac_model
        from dac.nn import layers as dac_layers
    return dac_model, dac_layers


# --------------------------------------------------------------------------- registry


def test_registry_names_and_config_classes():
    assert sorted(generators.REGISTRY) == ["dac_unet", "wavunet"]
    for name, (_, cfg_cls) in generators.REGISTRY.items():
        cfg = cfg_cls()
        assert dataclasses.fields(cfg)[0].name == "name" and cfg.name == name
        assert isinstance(cfg.total_stride, int)
    for cfg in TINY.values():
        assert type(build_generator(cfg)) is generators.REGISTRY[cfg.name][0]


def test_unknown_generator_names_the_known_ones():
    cfg = copy.copy(tiny_dac_unet())
    cfg.name = "bigvgan"
    with pytest.raises(ValueError, match=r"'bigvgan'.*\['dac_unet', 'wavunet'\]"):
        build_generator(cfg)


def test_config_loader_builds_and_checks_generator_sections():
    base = {"data": {"audio_dir": "a", "cache_dir": "c", "segment_length": 1024}, "trainer": {"max_steps": 10}}
    assert config_from_dict({**base, **tiny_model_sections("wavunet")}).generator == tiny_wavunet()
    base.update(tiny_model_sections("dac_unet"))
    assert config_from_dict(base).generator == tiny_dac_unet()
    with pytest.raises(ConfigError, match=r"generator: strides: \[2, 1\]"):
        config_from_dict(base, ["generator.strides=[2, 1]"])
    with pytest.raises(ConfigError, match=r"generator.widths: unknown key"):
        config_from_dict(base, ["generator.widths=[4, 8]"])
    with pytest.raises(ConfigError, match="multiple of the generator's total stride \\(16\\)"):
        config_from_dict(base, ["data.segment_length=1000"])


@pytest.mark.parametrize("cfg, stride", [(tiny_dac_unet(), 16), (tiny_dac_unet(strides=[2, 3]), 12),
                                         (tiny_wavunet(), 16), (DacUNetConfig(), 512), (WavUNetConfig(), 64)])
def test_total_stride(cfg, stride):
    assert cfg.total_stride == stride


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("length", [1, 777, 16384 + 3])
@pytest.mark.parametrize("name", list(TINY))
def test_shape_contract(name, length):
    torch.manual_seed(0)
    g = build_generator(TINY[name])
    with torch.no_grad():
        y = g(torch.randn(2, 1, length))
    assert y.shape == (2, 1, length)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list(TINY))
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    g = build_generator(TINY[name])
    x = torch.randn(2, 1, 300)
    (g(x) - x).pow(2).mean().backward()
    for pname, p in g.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["dac_unet", "wavunet"])
def test_deterministic_with_a_seed(name):
    x = torch.randn(1, 1, 500)
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(build_generator(TINY[name])(x))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_patching_folds_sample_pairs_into_channels():
    """With patch 2 the stem sees (x[0], x[1]), (x[2], x[3]), ... as its two channels."""
    g = build_generator(tiny_dac_unet())
    seen = {}
    g.stem.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    x = torch.arange(32.0).view(1, 1, 32)
    with torch.no_grad():
        g(x)
    assert torch.equal(seen["x"][0, 0, :3], torch.tensor([0.0, 2.0, 4.0]))
    assert torch.equal(seen["x"][0, 1, :3], torch.tensor([1.0, 3.0, 5.0]))


def test_deepcopy_after_forward():
    """EMA copies the generator; DAC's old weight_norm API cannot be deep-copied after a forward."""
    g = build_generator(TINY["dac_unet"])
    x = torch.randn(1, 1, 64)
    y = g(x)
    ema = copy.deepcopy(g)
    assert torch.equal(ema(x), y)


def test_weight_norm_parameter_names():
    """Names the optimiser routes on: magnitudes ``original0`` (AdamW), directions ``original1``."""
    names = [n for n, _ in build_generator(TINY["dac_unet"]).named_parameters()]
    assert "stem.parametrizations.weight.original0" in names
    assert "stem.parametrizations.weight.original1" in names
    assert "downs.0.block.0.block.0.alpha" in names  # Snake alpha, (1, C, 1)
    assert not any(n.endswith(("weight_g", "weight_v")) for n in names)


# --------------------------------------------------------------------------- parity with DAC


def _load(ours, ref):
    ours.load_state_dict(from_dac_state_dict(ref.state_dict()))  # strict: every key maps


def _randomise(module):
    """Random weights (Snake alphas around 1), so parity is not checked at a special point."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("alpha") else 0.0))


@pytest.mark.parametrize("block", ["snake", "residual", "encoder", "decoder"])
def test_blocks_match_dac(block):
    dac_model, dac_layers = _dac()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ours, c_in = {
            "snake": (dac_layers.Snake1d(6), Snake1d(6), 6),
            "residual": (dac_model.ResidualUnit(6, dilation=3), ResidualUnit(6, 3), 6),
            "encoder": (dac_model.EncoderBlock(12, stride=4), DownBlock(6, 12, 4), 6),
            "decoder": (dac_model.DecoderBlock(12, 6, stride=4), UpBlock(12, 6, 4), 12),
        }[block]
    _randomise(ref)
    _load(ours, ref)
    x = torch.randn(2, c_in, 96, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = ref(x), ours(x2)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y_ref.pow(2).sum().backward()
    y.pow(2).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-4)


def test_fused_snake_matches_dac_in_value_and_gradients():
    """The compiled activation (trainer.compile_activations) is DAC's Snake, on every shape it meets."""
    _, dac_layers = _dac()
    g = build_generator(tiny_dac_unet())
    n = fuse_activations(g)
    assert n == sum(isinstance(m, Snake1d) for m in g.modules()) and n > 0
    torch.manual_seed(0)
    for shape in [(2, 6, 96), (3, 5, 1001)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = dac_layers.Snake1d(shape[1])
        ours = Snake1d(shape[1])
        ours.fused = True
        with torch.no_grad():
            ref.alpha.uniform_(0.2, 3.0)
            ours.alpha.copy_(ref.alpha)
        x = torch.randn(*shape, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        y_ref, y = ref(x), ours(x2)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        y_ref.pow(2).sum().backward()
        y.pow(2).sum().backward()
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.alpha.grad, ref.alpha.grad, rtol=1e-4, atol=1e-3)


def test_unet_levels_are_dac_encoder_blocks():
    """Without patching, every DownBlock of a doubling dac_unet is DAC's EncoderBlock of that width."""
    dac_model, _ = _dac()
    cfg = DacUNetConfig(channels=4, strides=[2, 4], patch_size=1)
    g = build_generator(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = dac_model.Encoder(d_model=4, strides=[2, 4], d_latent=16)
    _load(g.stem, enc.block[0])
    for i in range(2):
        _load(g.downs[i], enc.block[i + 1])
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        h = g.stem(x)
        for down in g.downs:
            h = down(h)
        torch.testing.assert_close(h, enc.block[:3](x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- receptive field


RF_CASES = {  # small dilations keep the probe input short; TINY's no-patch case keeps 1, 3, 9
    "dac_unet_patch_add": tiny_dac_unet(dilations=[1, 2]),
    "dac_unet_patch_concat_odd": tiny_dac_unet(strides=[2, 3], skip="concat", dilations=[1], depth=2),
    "dac_unet_nopatch_noskip": TINY["dac_unet_nopatch_noskip_linear"],
    "wavunet": TINY["wavunet"],
    "wavunet_scale3_k3": TINY["wavunet_plain_tanh"],
}


@pytest.mark.parametrize("name", list(RF_CASES))
def test_receptive_field_matches_gradient_support(name):
    """The analytic input span of each output sample equals where its gradient is non-zero."""
    torch.manual_seed(0)
    cfg = RF_CASES[name]
    g = build_generator(cfg).double()
    period = cfg.total_stride
    rf = g.receptive_field()
    length = 2 * rf + 4 * period
    mid = length // 2 - (length // 2) % period
    x = torch.randn(period, 1, length, dtype=torch.float64, requires_grad=True)
    y = g(x)
    idx = torch.arange(period)
    y[idx, 0, mid + idx].sum().backward()  # row b: gradient of output sample mid + b
    widths = []
    for b in range(period):
        support = x.grad[b, 0].nonzero().flatten()
        assert (int(support.min()), int(support.max())) == g.input_span((mid + b, mid + b))
        widths.append(int(support.max() - support.min()) + 1)
    assert max(widths) == rf


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("config, params, rf", [("gan_dac", 61_765_190, 156_927), ("gan_wavunet", 10_142_340, 108_543)])
def test_shipped_configs_build(config, params, rf):
    """The sizes quoted in the YAML comments (built on the meta device: no weights allocated)."""
    cfg = load_config(config)
    assert cfg.data.segment_length % cfg.generator.total_stride == 0
    with torch.device("meta"):
        g = build_generator(cfg.generator)
    assert g.num_params() == params
    assert g.receptive_field() == rf


@pytest.mark.parametrize("cfg", [tiny_dac_unet(residual=True, output_activation="none"),
                                 tiny_dac_unet(residual=True, output_activation="none", gain_path=True),
                                 tiny_dac_unet(residual=True, patch_size=1, strides=[3, 2]),
                                 tiny_wavunet(residual=True), tiny_wavunet(residual=True, norm="none", gain_path=True)],
                         ids=["dac_unet", "dac_unet_gain", "dac_unet_tanh_nopatch", "wavunet", "wavunet_plain_gain"])
def test_residual_output_starts_as_the_identity_and_learns(cfg):
    torch.manual_seed(0)
    g = build_generator(cfg)
    x = torch.randn(2, 1, 1001) * 0.3
    assert torch.equal(g(x), x)  # exactly: the last layer starts at zero
    opt = torch.optim.Adam(g.parameters(), 1e-2)
    for _ in range(3):  # the zero layer gets a gradient, then everything upstream does
        opt.zero_grad()
        (g(x) - 0.5 * x).square().mean().backward()
        opt.step()
    assert not torch.equal(g(x), x)
    assert sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in g.parameters()) > len(list(g.parameters())) // 2


@pytest.mark.parametrize("cfg", [tiny_dac_unet(residual=True, gain_path=True),
                                 tiny_wavunet(residual=True, gain_path=True)], ids=["dac_unet", "wavunet"])
def test_gain_envelope_keeps_the_scale_of_the_gain_head(cfg):
    """The smoothing triangle sums to one, so a constant gain per frame is that gain at every sample, and
    a step between two frames becomes a linear ramp one frame long (piecewise linear between frames)."""
    g = build_generator(cfg)
    n = cfg.unet_stride
    assert g.gain_smoothing.shape == (1, 1, 2 * n - 1)
    torch.testing.assert_close(g.gain_smoothing.sum(), torch.tensor(1.0))
    with torch.no_grad():
        g.gain_head.bias.fill_(0.25)  # the head's weights start at zero: a constant 0.25 per frame
        env = g.gain_envelope(torch.randn(1, g.gain_head.in_channels, 6))
    torch.testing.assert_close(env, torch.full((1, 1, 6 * n), 0.25))
    frames = torch.tensor([0.0, 0.0, 1.0, 1.0])[None, None]  # a step between frames 1 and 2
    ramp = torch.nn.functional.conv1d(torch.nn.functional.pad(torch.repeat_interleave(frames, n, -1),
                                                              (n - 1, n - 1), mode="replicate"), g.gain_smoothing)
    mid = ramp[0, 0, n: 3 * n]  # from the middle of frame 1 to the middle of frame 2: 0 -> 1 linearly
    assert torch.all(mid.diff() > 0) and float(ramp[0, 0, :n // 2].max()) == 0.0
    torch.testing.assert_close(ramp[0, 0, 2 * n - 1] + ramp[0, 0, 2 * n], torch.tensor(1.0))
