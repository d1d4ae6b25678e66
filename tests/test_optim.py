"""Parameter routing on real models, optimizer building from config, exact learning rates per step."""
from __future__ import annotations

import io
import math

import pytest
import tiny_configs as tiny
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

from gan.config import ConfigError, OptimizerConfig, SchedulerConfig
from gan.optim.muon import Muon, matrix_shape
from gan.optim.params import build_optimizer, build_scheduler, lr_factor, split_named_params, split_params


def _routing(model):
    muon, adamw = split_named_params(model)
    return dict(muon), dict(adamw)


def _check_partition(model):
    muon, adamw = _routing(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(muon) + sorted(adamw) != [] and sorted([*muon, *adamw]) == sorted(names)
    for name, p in muon.items():
        assert p.ndim >= 2 and 1 not in matrix_shape(p.shape), name
        assert not name.endswith(("weight_g", "original0", "alpha", "bias")), name
    return muon, adamw


@pytest.fixture(scope="module")
def dac_codec():
    from dac.model.dac import DAC

    torch.manual_seed(0)
    return DAC(encoder_dim=8, encoder_rates=[2, 4], latent_dim=16, decoder_dim=32, decoder_rates=[4, 2],
               n_codebooks=2, codebook_size=8, codebook_dim=4)


def test_routing_dac_blocks(dac_codec):
    muon, adamw = _check_partition(dac_codec)
    # first conv (from 1 channel), its magnitude and bias -> AdamW
    for n in ("encoder.block.0.weight_v", "encoder.block.0.weight_g", "encoder.block.0.bias"):
        assert n in adamw
    # residual unit: Snake alpha (1, C, 1) -> AdamW; conv direction (C, C, 7) -> Muon, magnitude -> AdamW
    assert tuple(adamw["encoder.block.1.block.0.block.0.alpha"].shape) == (1, 8, 1)
    assert tuple(muon["encoder.block.1.block.0.block.1.weight_v"].shape) == (8, 8, 7)
    assert "encoder.block.1.block.0.block.1.weight_g" in adamw
    # transposed conv of the decoder -> Muon; last conv (to 1 channel) -> AdamW; codebooks -> AdamW
    assert tuple(muon["decoder.model.1.block.1.weight_v"].shape) == (32, 16, 8)
    last = [n for n in adamw if n.startswith("decoder.model.") and n.endswith("weight_v")]
    assert last and all(adamw[n].shape[0] == 1 for n in last)
    assert any("codebook" in n for n in adamw)
    n_convs = sum(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in dac_codec.modules())
    n_unit_convs = sum(1 for m in dac_codec.modules() if isinstance(m, nn.Conv1d) and 1 in (m.in_channels, m.out_channels))
    assert n_unit_convs == 2 and len(muon) <= n_convs - n_unit_convs


def test_routing_dac_discriminator():
    from dac.model.discriminator import Discriminator

    d = Discriminator(rates=[], periods=[2], fft_sizes=[128], sample_rate=44100)
    muon, adamw = _check_partition(d)
    assert "discriminators.0.convs.0.0.weight_v" in adamw  # MPD conv from 1 channel, (32, 1, 5, 1)
    assert tuple(muon["discriminators.0.convs.1.0.weight_v"].shape) == (128, 32, 5, 1)
    assert "discriminators.0.conv_post.weight_v" in adamw  # 1024 -> 1 logit
    # MRD: band stacks start from the STFT's 2 channels (real, imag): an input layer -> AdamW
    assert "discriminators.1.band_convs.0.0.0.weight_v" in adamw
    assert tuple(muon["discriminators.1.band_convs.0.1.0.weight_v"].shape) == (32, 32, 3, 9)
    assert "discriminators.1.conv_post.weight_v" in adamw


def test_routing_parametrized_weight_norm_depthwise_and_frozen():
    model = nn.Sequential(
        weight_norm(nn.Conv1d(1, 8, 7)),
        weight_norm(nn.Conv1d(8, 16, 3)),
        nn.Conv1d(16, 16, 5, groups=16),  # depthwise: a filter per channel, no matrix
        nn.Conv1d(16, 16, 5, groups=4),  # grouped: (16, 4 * 5) matrix
        nn.Linear(16, 16),
        nn.Linear(16, 1),
    )
    model[4].weight.requires_grad_(False)
    muon, adamw = _check_partition(model)
    assert sorted(muon) == ["1.parametrizations.weight.original1", "3.weight"]
    assert "1.parametrizations.weight.original0" in adamw and "0.parametrizations.weight.original1" in adamw
    assert "2.weight" in adamw and "5.weight" in adamw
    assert "4.weight" not in adamw  # frozen: in neither list


def test_split_params_shares_counted_once():
    lin = nn.Linear(8, 8)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    muon, adamw = split_params(model)
    assert len(muon) == 1 and muon[0] is lin.weight and len(adamw) == 1


def _conv_directions(model):
    """(name of each conv's trained weight matrix, conv) — the direction under weight norm."""
    out = []
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            names = [n for n, _ in m.named_parameters() if n in ("weight", "weight_v") or n.endswith("original1")]
            out.append((f"{mname}.{names[0]}", m))
    return out


@pytest.mark.parametrize("which", [*tiny.tiny_generators(), "discriminators", "msd"])
def test_routing_real_generators_and_discriminators(which):
    from discriminators import build_discriminator
    from generators import build_generator

    if which == "discriminators":
        model = build_discriminator(tiny.tiny_discriminators())
    elif which == "msd":
        model = build_discriminator([tiny.tiny_msd()])
    else:
        model = build_generator(tiny.tiny_generators()[which])
    muon, adamw = _check_partition(model)
    convs = _conv_directions(model)
    io = [n for n, m in convs if min(m.in_channels, m.out_channels) <= 2]
    hidden = [n for n, m in convs if min(m.in_channels, m.out_channels) > 2 and m.groups < m.in_channels]
    assert io and (hidden or which not in ("dac_unet", "wavunet", "discriminators", "msd"))
    assert all(n in adamw for n in io), io  # stems, heads, 1-channel / patch / STFT layers
    assert all(n in muon for n in hidden), [n for n in hidden if n not in muon]
    assert not any(n.endswith("alpha") for n in muon)


# --------------------------------------------------------------------------- build_optimizer


def test_build_adamw_matches_config(dac_codec):
    opt = build_optimizer(dac_codec, OptimizerConfig(name="adamw"))
    assert type(opt) is torch.optim.AdamW
    (g,) = opt.param_groups
    assert (g["lr"], g["betas"], g["weight_decay"]) == (1e-4, (0.8, 0.99), 0.01)  # DAC's AdamW
    assert len(g["params"]) == len(list(dac_codec.parameters()))


def test_build_muon_groups(dac_codec):
    cfg = OptimizerConfig(name="muon")
    assert (cfg.lr, cfg.betas, cfg.muon_lr, cfg.muon_momentum, cfg.weight_decay) == (1e-3, (0.9, 0.95), 1e-2, 0.95, 0.01)
    opt = build_optimizer(dac_codec, cfg)
    assert isinstance(opt, Muon)
    groups = {g["name"]: g for g in opt.param_groups}
    assert sorted(groups) == ["adamw", "muon", "muon_conv_transpose"]
    assert groups["muon"]["lr"] == 1e-2 and groups["muon"]["momentum"] == 0.95 and groups["muon"]["use_muon"]
    assert groups["adamw"]["lr"] == 1e-3 and groups["adamw"]["betas"] == (0.9, 0.95) and not groups["adamw"]["use_muon"]
    assert sorted(tuple(p.shape) for p in groups["muon_conv_transpose"]["params"]) == [(16, 8, 4), (32, 16, 8)]
    muon, adamw = split_params(dac_codec)
    assert len(groups["muon"]["params"]) + len(groups["muon_conv_transpose"]["params"]) == len(muon)
    assert len(groups["adamw"]["params"]) == len(adamw)


def test_muon_step_on_codec_moves_every_trained_param(dac_codec):
    model = dac_codec
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimizerConfig(name="muon"))
    out = model.decoder(model.encoder(torch.randn(2, 1, 256)))  # (B, 1, T): no quantizer, so codebooks get no grad
    out.pow(2).mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (p.grad is None), n
        p.data.copy_(before[n])
        p.grad = None


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="muon_momentum"):
        OptimizerConfig(name="muon", muon_momentum=1.0)
    with pytest.raises(ConfigError, match="betas"):
        OptimizerConfig(betas=(0.9, 1.5))
    with pytest.raises(ConfigError, match="gamma"):
        SchedulerConfig(gamma=0.0)


# --------------------------------------------------------------------------- schedules


def _lrs(sched_cfg, steps, total=100, base=(1e-2, 1e-3)):
    ps = [nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(4))]
    opt = Muon([{"params": [ps[0]], "use_muon": True, "lr": base[0]}, {"params": [ps[1]], "use_muon": False, "lr": base[1]}])
    sched = build_scheduler(opt, sched_cfg, total)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_exponential_by_hand():
    lrs = _lrs(SchedulerConfig(name="exponential", gamma=0.5), 4)
    assert lrs == [[1e-2, 1e-3], [5e-3, 5e-4], [2.5e-3, 2.5e-4], [1.25e-3, 1.25e-4]]
    dac = _lrs(SchedulerConfig(), 4)  # DAC: gamma 0.999996 per step
    assert dac[3][0] == pytest.approx(1e-2 * 0.999996**3, rel=1e-15)


def test_warmup_then_exponential_by_hand():
    lrs = [a for a, _ in _lrs(SchedulerConfig(name="exponential", gamma=0.5, warmup_steps=4), 7, base=(1.0, 1.0))]
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.25]  # decay counts from the end of warmup


def test_cosine_by_hand():
    cfg = SchedulerConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    lrs = [a for a, _ in _lrs(cfg, 9, total=6, base=(1.0, 1.0))]
    c = lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))  # noqa: E731
    assert lrs == pytest.approx([0.5, 1.0, 1.0, c(0.25), 0.55, c(0.75), 0.1, 0.1, 0.1], abs=1e-15)


def test_constant_by_hand():
    assert [a for a, _ in _lrs(SchedulerConfig(name="constant", warmup_steps=2), 4, base=(1.0, 1.0))] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(SchedulerConfig(name="constant"), 10**6, 10) == 1.0


def test_scheduler_resume_continues_the_schedule():
    cfg = SchedulerConfig(name="cosine", warmup_steps=3, min_lr_ratio=0.2)
    full = _lrs(cfg, 12, total=10)

    p = [nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(4))]
    def make():
        o = Muon([{"params": [p[0]], "use_muon": True, "lr": 1e-2}, {"params": [p[1]], "use_muon": False, "lr": 1e-3}])
        return o, build_scheduler(o, cfg, 10)

    opt, sched = make()
    seen = []
    for step in range(12):
        if step == 5:  # checkpoint through bytes, as a file would; weights_only load of plain state
            buf = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
            buf.seek(0)
            state = torch.load(buf, weights_only=True)
            opt, sched = make()
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen == full
    assert "cfg" not in sched.state_dict() and sched.state_dict()["last_epoch"] == 12


def test_resume_with_a_changed_lr_follows_the_new_config_from_the_first_step():
    cfg = SchedulerConfig(name="exponential", gamma=0.5)
    w = nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([w], lr=1e-3)
    sched = build_scheduler(opt, cfg, 10)
    for _ in range(2):
        opt.step()
        sched.step()
    state = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    opt = torch.optim.AdamW([w], lr=4e-3)  # the resumed run's config quadruples the lr
    sched = build_scheduler(opt, cfg, 10)
    opt.load_state_dict(state["opt"])  # carries the old lr
    sched.load_state_dict(state["sched"])
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-3 * 0.5**2)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-3 * 0.5**3)


def test_scheduler_errors():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(opt, SchedulerConfig(), 0)


def test_patching_wider_than_two_keeps_stem_and_head_on_adamw():
    from generators import build_generator
    from generators.dac_unet import DacUNetConfig

    g = build_generator(DacUNetConfig(channels=8, max_channels=16, strides=[2, 2], patch_size=4))
    opt = build_optimizer(g, OptimizerConfig(name="muon"))
    adamw = {id(p) for group in opt.param_groups if not group["use_muon"] for p in group["params"]}
    for module in (g.stem, g.head[1]):
        assert all(id(p) in adamw for p in module.parameters())
    muon = {id(p) for group in opt.param_groups if group["use_muon"] for p in group["params"]}
    assert muon, "hidden matrices still go to Muon"
