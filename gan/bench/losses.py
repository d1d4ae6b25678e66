"""Loss speed: our mel loss and adversarial step vs DAC's MelSpectrogramLoss / GANLoss (forward + backward).

Both sides run on the same inputs in the same process, interleaved rep by rep, so
machine load hits both alike; the ratios are ours / DAC's (< 1: ours is faster), from
the best (minimum) wall-clock and process CPU times over the reps, which is what
survives a shared machine best; medians are listed too. The top-level ratios are those
of the largest size measured for each loss. The adversarial step is one discriminator step
(D loss, backward into D) plus one generator step (adv + 2 * feature matching,
backward into the fake), with DAC's ``Discriminator`` built with ``--gan-periods`` and
``--gan-fft-sizes`` (defaults smaller than DAC's five periods and three FFT sizes, to
keep the default run short on a CPU; pass ``--gan-periods 2 3 5 7 11 --gan-fft-sizes
2048 1024 512`` for DAC's own).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from gan.config import MelLossConfig
from gan.losses.adversarial import AdversarialLoss
from gan.losses.reconstruction import MultiScaleMelLoss


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=["4x16384", "16x49152"], help="BATCHxSAMPLES shapes")
    parser.add_argument("--mel-reps", nargs="+", type=int, default=[8, 3], help="timed reps per size")
    parser.add_argument("--gan-reps", nargs="+", type=int, default=[2, 0],
                        help="timed reps per size; 0 skips (16x49152 takes minutes per rep on a 2-core CPU)")
    parser.add_argument("--gan-periods", nargs="*", type=int, default=[2])
    parser.add_argument("--gan-fft-sizes", nargs="*", type=int, default=[])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--sample-rate", type=int, default=48000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _race(fns: dict, reps: int, device: torch.device, warmup: bool) -> dict:
    """Run each fn ``reps`` times, interleaved; best and median wall / CPU seconds per fn."""
    if warmup:
        for fn in fns.values():
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            w, c = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    out = {f"{k}_s": min(v) for k, v in wall.items()}
    out.update({f"{k}_median_s": statistics.median(v) for k, v in wall.items()})
    out.update({f"{k}_cpu_s": min(v) for k, v in cpu.items()})
    out["ratio"] = out["ours_s"] / out["dac_s"]
    out["median_ratio"] = out["ours_median_s"] / out["dac_median_s"]
    out["cpu_ratio"] = out["ours_cpu_s"] / out["dac_cpu_s"]
    out["reps"] = reps
    return out


def _bench_mel(b: int, t: int, reps: int, sr: int, device: torch.device) -> dict:
    from audiotools import AudioSignal
    from dac.nn.loss import MelSpectrogramLoss

    cfg = MelLossConfig()
    ours = MultiScaleMelLoss(cfg, sr).to(device)
    dac = MelSpectrogramLoss(n_mels=cfg.n_mels, window_lengths=cfg.window_lengths, clamp_eps=cfg.clamp_eps,
                             mag_weight=cfg.mag_weight, log_weight=cfg.log_weight, pow=cfg.pow,
                             mel_fmin=cfg.mel_fmin, mel_fmax=cfg.mel_fmax)
    g = torch.Generator().manual_seed(0)
    ref = (0.3 * torch.randn(b, 1, t, generator=g)).to(device)
    est = (ref + 0.05 * torch.randn(b, 1, t, generator=g).to(device)).requires_grad_(True)
    values = {}

    def run_ours():
        loss = ours(est, ref)
        loss.backward()
        values["ours"] = float(loss)

    def run_dac():
        loss = dac(AudioSignal(est, sr), AudioSignal(ref, sr))
        loss.backward()
        values["dac"] = float(loss)

    out = _race({"ours": run_ours, "dac": run_dac}, reps, device, warmup=True)
    out["value_rel_diff"] = abs(values["ours"] - values["dac"]) / abs(values["dac"])
    return out


class _DacFormat(torch.nn.Module):
    """DAC's discriminator output (feature lists, logits last) -> list[(logits, features)]."""

    def __init__(self, disc):
        super().__init__()
        self.disc = disc

    def forward(self, x):
        return [(fmap[-1], fmap[:-1]) for fmap in self.disc(x)]


def _bench_gan(b: int, t: int, reps: int, disc, sr: int, device: torch.device, warmup: bool) -> dict:
    from audiotools import AudioSignal
    from dac.nn.loss import GANLoss

    ours, dac = AdversarialLoss(_DacFormat(disc)), GANLoss(disc)
    g = torch.Generator().manual_seed(1)
    real = (0.3 * torch.randn(b, 1, t, generator=g)).to(device)
    fake = (real + 0.05 * torch.randn(b, 1, t, generator=g).to(device)).requires_grad_(True)

    def run_ours():
        disc.zero_grad(set_to_none=True)
        d_loss, _ = ours.discriminator_loss(fake, real)
        d_loss.backward()
        terms = ours.generator_losses(fake, real)
        (terms["adv"] + 2.0 * terms["feat"]).backward()

    def run_dac():
        disc.zero_grad(set_to_none=True)
        fake_sig, real_sig = AudioSignal(fake, sr), AudioSignal(real, sr)
        dac.discriminator_loss(fake_sig, real_sig).backward()
        adv, feat = dac.generator_loss(fake_sig, real_sig)
        (adv + 2.0 * feat).backward()

    return _race({"ours": run_ours, "dac": run_dac}, reps, device, warmup=warmup)


def run(args: argparse.Namespace) -> dict:
    from dac.model.discriminator import Discriminator

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    if len(args.mel_reps) != len(sizes) or len(args.gan_reps) != len(sizes):
        raise SystemExit("bench losses: give one --mel-reps and one --gan-reps value per --sizes entry")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DAC's weight_norm and audiotools' deprecation warnings
        disc = Discriminator(rates=[], periods=args.gan_periods, fft_sizes=args.gan_fft_sizes,
                             sample_rate=args.sample_rate).to(device)
        results = {}
        for (b, t), mel_reps, gan_reps in zip(sizes, args.mel_reps, args.gan_reps):
            entry = {"mel": _bench_mel(b, t, mel_reps, args.sample_rate, device)}
            if gan_reps > 0:  # warm up only where there are several reps (big sizes are slow on a CPU)
                entry["gan"] = _bench_gan(b, t, gan_reps, disc, args.sample_rate, device, warmup=gan_reps > 1)
            else:
                entry["gan"] = "skipped: give this size a --gan-reps count"
            results[f"{b}x{t}"] = entry
    mel_size = list(results)[-1]
    gan_size = next((k for k in reversed(results) if isinstance(results[k]["gan"], dict)), None)
    gan = results[gan_size]["gan"] if gan_size else {}
    return {
        "mel_vs_dac_time_ratio": results[mel_size]["mel"]["ratio"],
        "mel_vs_dac_cpu_time_ratio": results[mel_size]["mel"]["cpu_ratio"],
        "mel_size": mel_size,
        "gan_vs_dac_time_ratio": gan.get("ratio"),
        "gan_vs_dac_cpu_time_ratio": gan.get("cpu_ratio"),
        "gan_size": gan_size,
        "sizes": results,
        "gan_discriminator": f"dac Discriminator(periods={args.gan_periods}, fft_sizes={args.gan_fft_sizes})",
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
