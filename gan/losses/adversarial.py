"""The adversarial side of training: discriminator loss, and the generator's adversarial
and feature-matching terms computed with the discriminator frozen.

The discriminator maps ``(B, 1, T)`` to ``list[(logits, feature_maps)]``, one entry per
sub-discriminator, and must treat batch items independently (no batch statistics):
the discriminator step runs fakes and reals as one batch.

Terms follow DAC's ``GANLoss`` (``dac/nn/loss.py``):
  LSGAN   D: sum_i mean(fake_i^2) + mean((1 - real_i)^2)     G: sum_i mean((1 - fake_i)^2)
  hinge   D: sum_i mean(relu(1 + fake_i)) + mean(relu(1 - real_i))   G: sum_i -mean(fake_i)
  feature matching: sum_i sum_j mean|F_ij(fake) - F_ij(real)| over every feature map
  (the logits excluded), the real side detached.

    adv = AdversarialLoss(D, kind="lsgan", names=["mpd_2", "mrstft_2048"])
    d_loss, d_terms = adv.discriminator_loss(fake, real)       # backward -> D grads
    g_terms = adv.generator_losses(fake, real)                 # backward -> G grads only
    loss = w.adv * g_terms["adv"] + w.feat * g_terms["feat"]
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

DiscOutput = list[tuple[torch.Tensor, list[torch.Tensor]]]


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on every parameter of ``module`` and restore it afterwards."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def _discriminator_names(module: nn.Module, names: list[str] | None) -> list[str] | None:
    if names is not None:
        return list(names)
    found = getattr(module, "names", None)
    if callable(found):
        found = found()
    return list(found) if found is not None else None


class AdversarialLoss:
    """Owns the loss side of a discriminator ``D`` (which may be a DDP / DeepSpeed wrapper).

    ``discriminator_loss`` calls ``D`` itself, so a wrapper's gradient sync runs;
    ``generator_losses`` calls the unwrapped module with its parameters frozen, so no
    gradient reaches D's parameters and no DDP reducer is involved.
    """

    def __init__(self, discriminator: nn.Module, kind: Literal["lsgan", "hinge"] = "lsgan",
                 names: list[str] | None = None):
        if kind not in ("lsgan", "hinge"):
            raise ValueError(f"loss.gan: unknown adversarial loss {kind!r}; use 'lsgan' or 'hinge'")
        self.discriminator = discriminator
        self.kind = kind
        self.names = _discriminator_names(getattr(discriminator, "module", discriminator), names)

    @property
    def _plain(self) -> nn.Module:
        """The module inside a DDP / DeepSpeed wrapper (or ``D`` itself)."""
        return getattr(self.discriminator, "module", self.discriminator)

    def _name(self, i: int, count: int) -> str:
        if self.names is None:
            return str(i)
        if len(self.names) != count:
            raise ValueError(
                f"AdversarialLoss: {len(self.names)} discriminator names for {count} sub-discriminator "
                f"outputs; pass one name per sub-discriminator"
            )
        return self.names[i]

    def discriminator_loss(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, 1, T) fake (detached here) and real -> (total, {"<name>": detached term}).

        One forward pass of ``D`` over the fakes and reals stacked along the batch.
        """
        b = fake.shape[0]
        outputs = self.discriminator(torch.cat([fake.detach(), real]))  # (2B, 1, T)
        total = fake.new_zeros((), dtype=torch.float32)
        terms = {}
        for i, (logits, _) in enumerate(outputs):
            logits = logits.float()
            lf, lr = logits[:b], logits[b:]
            if self.kind == "lsgan":
                term = lf.pow(2).mean() + (1.0 - lr).pow(2).mean()
            else:
                term = F.relu(1.0 + lf).mean() + F.relu(1.0 - lr).mean()
            total = total + term
            terms[self._name(i, len(outputs))] = term.detach()
        return total, terms

    def generator_losses(self, fake: torch.Tensor, real: torch.Tensor | None,
                         feature_matching: bool = True) -> dict[str, torch.Tensor]:
        """(B, 1, T) fake (with graph) and real -> {"adv", "feat", "adv/<name>", "feat/<name>"}.

        ``adv`` and ``feat`` carry gradients to ``fake`` only; the per-name terms are
        detached, for logging. With ``feature_matching=False`` the real pass is skipped
        and ``feat`` is a constant 0.
        """
        d = self._plain
        with frozen(d):
            if feature_matching:
                with torch.no_grad():
                    real_out: DiscOutput = d(real)
            fake_out: DiscOutput = d(fake)
        adv_total = fake.new_zeros((), dtype=torch.float32)
        feat_total = fake.new_zeros((), dtype=torch.float32)
        out: dict[str, torch.Tensor] = {}
        for i, (logits, feats) in enumerate(fake_out):
            name = self._name(i, len(fake_out))
            logits = logits.float()
            adv = (1.0 - logits).pow(2).mean() if self.kind == "lsgan" else -logits.mean()
            adv_total = adv_total + adv
            out[f"adv/{name}"] = adv.detach()
            if feature_matching:
                real_feats = real_out[i][1]
                if len(real_feats) != len(feats):
                    raise ValueError(f"AdversarialLoss: {name} returned a different number of feature maps for fake and real")
                feat = fake.new_zeros((), dtype=torch.float32)
                for f_fake, f_real in zip(feats, real_feats):
                    feat = feat + F.l1_loss(f_fake.float(), f_real.float())
                feat_total = feat_total + feat
                out[f"feat/{name}"] = feat.detach()
        return {"adv": adv_total, "feat": feat_total, **out}
