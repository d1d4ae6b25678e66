"""Helpers shared by the test modules: tiny configs and data for the trainer, a toy generator and
checkpoints for inference and evaluation, small audio folders. Fixtures built on them live in
``conftest.py``."""
from __future__ import annotations

import contextlib
import math
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

import generators
from gan.config import DegradeConfig, config_from_dict, dump_config, to_dict
from gan.inference import Enhancer, LoadedGenerator
from gan.train.trainer import Trainer
from tiny_configs import tiny_dac_unet


PY = sys.executable
GLOO_ABORT = "terminate called without an active exception"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launch(cmd: list[str], fresh: tuple[Path, ...] = (), **kwargs) -> subprocess.CompletedProcess:
    """Run an ``accelerate launch`` command line (``--main_process_port`` in it); when a rank aborts as
    gloo's worker threads rarely make one on the CPU (std::terminate, about 1 run in 10 on a loaded
    2-core machine), run it once more on a fresh port with the folders ``fresh`` removed first."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0 and GLOO_ABORT in proc.stdout + proc.stderr:
        warnings.warn(f"a rank aborted ({GLOO_ABORT}); running once more: {' '.join(map(str, cmd[-4:]))}")
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
        cmd = list(cmd)
        cmd[cmd.index("--main_process_port") + 1] = str(free_port())
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    return proc


def tiny_dict(audio_dir: Path, cache_dir: Path, **trainer) -> dict:
    return {
        "data": {"audio_dir": str(audio_dir), "cache_dir": str(cache_dir), "segment_length": 2048,
                 "batch_size": 2, "num_workers": 0, "val_fraction": 0.25, "val_segment_seconds": 0.25,
                 "val_examples": 2, "degrade": {"shifts": [12], "n_fft": 512}},
        "generator": {"name": "dac_unet", "channels": 4, "max_channels": 8, "strides": [2, 4]},
        "discriminators": [{"name": "mpd", "periods": [2, 3], "channels": [4, 8]},
                           {"name": "mrd", "window_lengths": [512, 256], "channels": 4}],
        "trainer": {"max_steps": 6, "pretrain_steps": 3, "log_every": 1, "val_every": 3, "save_every": 3,
                    "keep_last": 5, **trainer},
        "loss_weights": {"mel": 15.0, "l1": 1.0, "feat": 2.0, "adv": 1.0},
        "loss": {"mel": {"n_mels": [10, 40], "window_lengths": [64, 512], "mel_fmin": [0, 0],
                         "mel_fmax": [None, None]}},
        "optim": {"generator": {"lr": 1e-3}, "discriminator": {"lr": 1e-3}},
    }


def make_trainer(tiny_data, run_dir, resume=None, overrides=(), **trainer) -> Trainer:
    cfg = config_from_dict(tiny_dict(*tiny_data, **trainer), list(overrides))
    return Trainer(cfg, run_dir, resume=resume, progress=False)


def checkpoint_weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    g = torch.load(ckpt / "generator.pt", weights_only=True)["state_dict"]
    files = sorted(ckpt.glob("model*.safetensors"))
    return {"ema_g": g, **{f.name: load_file(f) for f in files}}


@contextlib.contextmanager
def written_on_gpu():
    """``torch.save`` inside the block tags every CPU storage ``cuda:0``, as a run on a GPU writes its files."""
    from torch import serialization

    entry = (-1, lambda storage: "cuda:0" if storage.device.type == "cpu" else None, lambda storage, location: None)
    serialization._package_registry.insert(0, entry)  # asked first, before the CPU's own tagger
    try:
        yield
    finally:
        serialization._package_registry.remove(entry)


def rewrite_as_on_gpu(path: Path) -> None:
    """Rewrite a ``torch.save`` file as a GPU run would have written it; checks that the tag took.

    Read back without a ``map_location`` it must fail on a CPU-only machine (the CUDA
    deserialisation error) or land on the GPU.
    """
    obj = torch.load(path, map_location="cpu", weights_only=False)
    with written_on_gpu():
        torch.save(obj, path)
    if torch.cuda.is_available():
        back = torch.load(path, weights_only=False)
        assert next(t for t in _tensors(back)).device.type == "cuda", path
    else:
        try:
            torch.load(path, weights_only=False)
        except RuntimeError as e:
            assert "CUDA" in str(e), e
        else:
            raise AssertionError(f"{path}: still loads on the CPU without a map")


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = checkpoint_weights(a), checkpoint_weights(b)
    assert wa.keys() == wb.keys() and len(wa) == 3
    for name in wa:
        for k in wa[name]:
            assert torch.equal(wa[name][k], wb[name][k]), (name, k)


def write_config(tiny_data, path: Path, **trainer) -> Path:
    path.write_text(yaml.safe_dump(tiny_dict(*tiny_data, **trainer)))
    return path


@dataclass
class ToyConfig:
    """A cheap strided conv net with a known receptive field (for long-signal tests)."""
    name: str = "toy"
    width: int = 2

    @property
    def total_stride(self) -> int:
        return 4


class Toy(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg, w = cfg, cfg.width
        self.a = nn.Conv1d(1, w, 7, padding=3)
        self.down = nn.Conv1d(w, w, 8, stride=4, padding=2)
        self.mid = nn.Conv1d(w, w, 5, padding=6, dilation=3)
        self.up = nn.ConvTranspose1d(w, w, 8, stride=4, padding=2)
        self.out = nn.Conv1d(w, 1, 7, padding=3)

    def receptive_field(self) -> int:
        return 7 + 4 * (2 + 13 + 2) + 7

    def forward(self, x):  # (B, 1, T) -> (B, 1, T)
        n = x.shape[-1]
        h = torch.tanh(self.a(F.pad(x, (0, -n % 4))))
        h = torch.tanh(self.down(h))
        h = torch.tanh(self.up(h + torch.tanh(self.mid(h))))
        return self.out(h)[..., :n]


@dataclass
class StubDiscriminatorConfig:
    name: str = "test_disc"
TINY_DAC = to_dict(tiny_dac_unet())


def write_checkpoint(run_dir, generator: dict, step: int = 7, seed: int = 0, identity: bool = False,
                     data: dict | None = None):
    """A run directory in the trainer's layout: config.yaml + generator.pt under checkpoints/step_X;
    ``data``: more fields of the config's data section."""
    cfg = config_from_dict({
        "data": {"audio_dir": "data/demo", "cache_dir": "cache/x", "segment_length": 1024, **(data or {})},
        "generator": generator, "discriminators": [{"name": "test_disc"}], "trainer": {"max_steps": 10}})
    torch.manual_seed(seed)
    model = generators.build_generator(cfg.generator)
    step_dir = run_dir / "checkpoints" / f"step_{step:09d}"
    step_dir.mkdir(parents=True)
    (step_dir / "config.yaml").write_text(dump_config(cfg))
    torch.save({"state_dict": model.state_dict(), "step": step, "ema": False}, step_dir / "generator.pt")
    (run_dir / "checkpoints" / "latest").write_text(step_dir.name + "\n")
    return model


def enhancer(model, cfg_generator, **kw) -> Enhancer:
    """An Enhancer around an in-memory model (no checkpoint, no registry)."""
    cfg = SimpleNamespace(generator=cfg_generator, data=SimpleNamespace(degrade=DegradeConfig()))
    return Enhancer(LoadedGenerator(model.eval(), cfg, 0, False, None), device="cpu", **kw)


def rel_db(a, b) -> float:
    return 20 * math.log10(float((a - b).norm() / b.norm()) + 1e-30)


def noise(n=48000, seed=0, scale=0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def make_folder(path, seconds=0.5, files=2):
    path.mkdir()
    for i in range(files):
        t = np.arange(int(44100 * seconds)) / 44100
        x = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + noise(len(t), seed=i, scale=0.02)
        sf.write(path / f"f{i}.wav", x.astype(np.float32), 44100, subtype="FLOAT")
    return path


IDENTITY = {"name": "dac_unet", "channels": 4, "max_channels": 8, "strides": [2, 4], "residual": True,
            "output_activation": "none"}  # untrained with a zero last layer: the identity


def half_level_pairs(tmp_path, files=2):
    """A run ``tmp_path/a`` of the identity, clean files, and a folder of the same files at half their level
    (a pure level change): ``(clean folder, degraded folder)``."""
    write_checkpoint(tmp_path / "a", IDENTITY)
    clean = make_folder(tmp_path / "clean", files=files)
    (tmp_path / "deg").mkdir()
    for f in clean.iterdir():
        x, sr = sf.read(f)
        sf.write(tmp_path / "deg" / f.name, 0.5 * x, sr, subtype="FLOAT")
    return clean, tmp_path / "deg"


def tone_folder(path, files=3, seconds=0.5):
    """Harmonic tones with a decaying envelope (real pitch content for a shifter), 44.1 kHz."""
    path.mkdir(parents=True)
    t = np.arange(int(44100 * seconds)) / 44100
    for i in range(files):
        f0 = 180.0 * (1 + i)
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * np.exp(-2 * t) * 0.2
        sf.write(path / f"tone{i}.wav", x.astype(np.float32), 44100)
    return path


def make_loss_nan(trainer, monkeypatch) -> None:
    """From now on the trainer's reconstruction loss is NaN (its terms stay finite)."""
    forward = trainer.reconstruction.forward

    def nan_loss(est, ref):
        total, terms = forward(est, ref)
        return total * float("nan"), terms

    monkeypatch.setattr(trainer.reconstruction, "forward", nan_loss)


def endless_run_command(tiny_data, tmp_path: Path) -> tuple[list[str], Path]:
    """``(command, run dir)`` of a tiny training that runs until stopped, with two loader workers (which get
    every signal too): for tests of SIGTERM and Ctrl-C."""
    import yaml

    d = tiny_dict(*tiny_data, max_steps=100000, pretrain_steps=2, save_every=100000, val_every=100000, log_every=1)
    d["data"]["num_workers"] = 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    root = Path(__file__).resolve().parent.parent
    return [PY, str(root / "launch" / "train.py"), "--config", str(cfg), "--run-dir", str(run)], run


def start_endless_run(tiny_data, tmp_path: Path, settle: float = 2.0):
    """``(process, command, run dir)``: ``endless_run_command`` started in its own process group, returned once
    it has logged (TensorBoard events) and trained ``settle`` seconds more."""
    import subprocess
    import time

    cmd, run = endless_run_command(tiny_data, tmp_path)
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "tb").glob("events*")):
        time.sleep(0.2)
    time.sleep(settle)  # some steps
    return proc, cmd, run


def assert_chunked_equals_whole(enh, model) -> None:
    """Chunked enhancement by ``enh`` (1600-sample windows) equals ``model`` on the whole 7-window signal,
    and without context it leaves seams (so the tolerance is not trivially met)."""
    x = (torch.randn(1, 6 * 1600 + 77) * 0.3).clamp(-0.9, 0.9)  # 7 windows, inside the training range
    with torch.inference_mode():
        whole = model(x[:, None])[:, 0]
    assert rel_db(enh.enhance(x), whole) < -60
    enh.context = 0  # no context leaves seams
    assert rel_db(enh.enhance(x), whole) > -60
