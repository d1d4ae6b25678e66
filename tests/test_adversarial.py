"""Adversarial terms: hand-computed LSGAN / hinge / feature matching, a frozen D in the
generator step (also under DDP), and parity with DAC's GANLoss."""
import warnings

import pytest
import torch
from torch import nn

from gan.losses.adversarial import AdversarialLoss, frozen

FAKE = [0.5, 0.25]
REAL = [1.0, 0.0]


class Toy(nn.Module):
    """Two sub-discriminators on (B, 1, T): "a" -> (p x, [p x, 2 p x]), "b" -> (2 p x, [3 p x]); p = 1."""

    names = ["a", "b"]

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(1.0))
        self.calls = []  # batch size of each forward

    def forward(self, x):
        self.calls.append(x.shape[0])
        return [(self.p * x, [self.p * x, 2 * self.p * x]), (2 * self.p * x, [3 * self.p * x])]


class CountingWrapper(nn.Module):
    """Stands in for DDP: holds the model as ``.module`` and counts its own forward calls."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.module(x)


def _pair():
    fake = torch.tensor([[FAKE]], requires_grad=True)  # (1, 1, 2)
    real = torch.tensor([[REAL]])
    return fake, real


def test_lsgan_discriminator_hand_values_and_gradient():
    d = Toy()
    fake, real = _pair()
    total, terms = AdversarialLoss(d, "lsgan").discriminator_loss(fake, real)
    # a: mean(f^2) + mean((1 - r)^2) = (0.25 + 0.0625) / 2 + (0 + 1) / 2 = 0.65625
    # b: mean((2f)^2) + mean((1 - 2r)^2) = (1 + 0.25) / 2 + (1 + 1) / 2 = 1.625
    assert float(terms["a"]) == pytest.approx(0.65625) and float(terms["b"]) == pytest.approx(1.625)
    assert total.item() == pytest.approx(2.28125)
    total.backward()
    # d/dp: a: 2 mean(f^2) + mean(-2 r (1 - r)) = 0.3125 + 0; b: 8 mean(f^2) + mean(-4 r (1 - 2 r)) = 1.25 + 2
    assert float(d.p.grad) == pytest.approx(3.5625)
    assert fake.grad is None  # fakes are detached in the D step


def test_hinge_discriminator_hand_values():
    fake, real = _pair()
    total, terms = AdversarialLoss(Toy(), "hinge").discriminator_loss(fake, real)
    # a: mean(relu(1 + f)) + mean(relu(1 - r)) = 1.375 + 0.5; b: mean(relu(1 + 2f)) + mean(relu(1 - 2r)) = 1.75 + 0.5
    assert float(terms["a"]) == pytest.approx(1.875) and float(terms["b"]) == pytest.approx(2.25)
    assert total.item() == pytest.approx(4.125)


def test_lsgan_generator_and_feature_matching_hand_values_and_gradients():
    d = Toy()
    fake, real = _pair()
    out = AdversarialLoss(d, "lsgan").generator_losses(fake, real)
    # adv a: mean((1 - f)^2) = (0.25 + 0.5625) / 2; b: mean((1 - 2f)^2) = (0 + 0.25) / 2
    assert float(out["adv/a"]) == pytest.approx(0.40625) and float(out["adv/b"]) == pytest.approx(0.125)
    assert out["adv"].item() == pytest.approx(0.53125)
    # feat a: mean|f - r| + mean|2f - 2r| = 0.375 + 0.75; b: mean|3f - 3r| = 1.125
    assert float(out["feat/a"]) == pytest.approx(1.125) and float(out["feat/b"]) == pytest.approx(1.125)
    assert out["feat"].item() == pytest.approx(2.25)
    assert not out["adv/a"].requires_grad and not out["feat/b"].requires_grad
    (g_adv,) = torch.autograd.grad(out["adv"], fake, retain_graph=True)
    # d/df: a: -(1 - f) = [-0.5, -0.75]; b: -2 (1 - 2f) = [0, -1]
    assert g_adv.flatten().tolist() == pytest.approx([-0.5, -1.75])
    (g_feat,) = torch.autograd.grad(out["feat"], fake)
    # sign(f - r) = [-1, 1], times (1 + 2) / 2 for a and 3 / 2 for b
    assert g_feat.flatten().tolist() == pytest.approx([-3.0, 3.0])


def test_hinge_generator_hand_value():
    fake, real = _pair()
    out = AdversarialLoss(Toy(), "hinge").generator_losses(fake, real)
    assert float(out["adv/a"]) == pytest.approx(-0.375) and float(out["adv/b"]) == pytest.approx(-0.75)
    assert out["adv"].item() == pytest.approx(-1.125)


def test_generator_step_leaves_discriminator_untouched_and_uses_the_unwrapped_module():
    d = Toy()
    wrapped = CountingWrapper(d)
    adv = AdversarialLoss(wrapped)
    assert adv.names == ["a", "b"]  # found on the unwrapped module
    fake, real = _pair()
    out = adv.generator_losses(fake, real)
    (out["adv"] + out["feat"]).backward()
    assert d.p.grad is None and d.p.requires_grad  # no gradient into D; flags restored
    assert fake.grad is not None
    assert wrapped.calls == [] and d.calls == [1, 1]  # the wrapper (DDP's reducer) is never involved
    adv.discriminator_loss(fake, real)
    assert wrapped.calls == [2]  # D step: one pass over fakes and reals stacked


def test_frozen_restores_only_what_was_trainable():
    m = nn.Linear(2, 2)
    m.bias.requires_grad_(False)
    with frozen(m):
        assert not m.weight.requires_grad
    assert m.weight.requires_grad and not m.bias.requires_grad
    with pytest.raises(RuntimeError), frozen(m):
        raise RuntimeError("restored on errors too")
    assert m.weight.requires_grad


def test_generator_losses_without_feature_matching_skip_the_real_pass():
    d = Toy()
    fake, _ = _pair()
    out = AdversarialLoss(d).generator_losses(fake, None, feature_matching=False)
    assert d.calls == [1] and out["feat"].item() == 0.0 and "feat/a" not in out
    assert out["adv"].item() == pytest.approx(0.53125)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="lsgan"):
        AdversarialLoss(Toy(), "wgan")
    fake, real = _pair()
    with pytest.raises(ValueError, match="one name per sub-discriminator"):
        AdversarialLoss(Toy(), names=["only_one"]).discriminator_loss(fake, real)


def test_ddp_discriminator_steps_around_a_frozen_generator_step(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        d = DDP(Toy())
        adv = AdversarialLoss(d)
        fake, real = _pair()
        for _ in range(2):  # D step, G step, D step: the reducer must stay consistent
            d.zero_grad()
            adv.discriminator_loss(fake, real)[0].backward()
            assert float(d.module.p.grad) == pytest.approx(3.5625)
            d.zero_grad(set_to_none=True)
            out = adv.generator_losses(fake, real)
            (out["adv"] + out["feat"]).backward()
            assert d.module.p.grad is None
    finally:
        dist.destroy_process_group()


class DacAdapter(nn.Module):
    """DAC's Discriminator (list of feature lists, logits last) -> list[(logits, features)]."""

    names = ["mpd_2", "mrd_128"]

    def __init__(self, dac_disc):
        super().__init__()
        self.dac = dac_disc

    def forward(self, x):
        return [(fmap[-1], fmap[:-1]) for fmap in self.dac(x)]


@pytest.fixture(scope="module")
def dac_setup():
    from dac.model.discriminator import Discriminator

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm deprecation
        disc = Discriminator(rates=[], periods=[2], fft_sizes=[128], sample_rate=48000)
    g = torch.Generator().manual_seed(1)
    real = torch.randn(2, 1, 1024, generator=g) * 0.3
    fake = real + 0.2 * torch.randn(2, 1, 1024, generator=g)
    return disc, fake, real


def _close(a, b, rel=1e-4):
    return float((a - b).abs().max()) <= rel * float(b.abs().max().clamp(min=1e-12))


def test_lsgan_and_feature_matching_equal_dac_ganloss(dac_setup):
    from audiotools import AudioSignal
    from dac.nn.loss import GANLoss

    disc, fake, real = dac_setup
    ours, dac = AdversarialLoss(DacAdapter(disc), "lsgan"), GANLoss(disc)

    disc.zero_grad()
    d_ours, d_terms = ours.discriminator_loss(fake, real)
    d_ours.backward()
    grads_ours = [p.grad.clone() for p in disc.parameters()]
    disc.zero_grad()
    d_dac = dac.discriminator_loss(AudioSignal(fake, 48000), AudioSignal(real, 48000))
    d_dac.backward()
    assert torch.isclose(d_ours, d_dac, rtol=1e-5)
    assert set(d_terms) == set(DacAdapter.names)
    assert all(_close(a, p.grad) for a, p in zip(grads_ours, disc.parameters()))

    disc.zero_grad(set_to_none=True)
    f_ours = fake.clone().requires_grad_(True)
    out = ours.generator_losses(f_ours, real)
    (out["adv"] + 2 * out["feat"]).backward()
    assert all(p.grad is None for p in disc.parameters())
    f_dac = fake.clone().requires_grad_(True)
    adv_dac, feat_dac = dac.generator_loss(AudioSignal(f_dac, 48000), AudioSignal(real, 48000))
    (adv_dac + 2 * feat_dac).backward()
    assert torch.isclose(out["adv"], adv_dac, rtol=1e-5) and torch.isclose(out["feat"], feat_dac, rtol=1e-5)
    assert _close(f_ours.grad, f_dac.grad)
    assert torch.isclose(sum(out[f"feat/{n}"] for n in DacAdapter.names), out["feat"])
