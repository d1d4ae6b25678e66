"""A checkpoint written by an earlier version of unshift resumes, bit for bit.

``tests/data/legacy_run`` is a tiny run saved at step 4 (generator-only steps 0-1, adversarial from
step 2) before the trainer was split into modules and before ``trainer.warmup_steps`` became
``trainer.pretrain_steps`` and the ``mrstft`` discriminator became ``mrd``. Resumed to step 6 here,
it must reach the weights that version reached (``expected_step6_*.safetensors``): to the bit on the
machine that wrote them; on another CPU, whose kernels may sum in another order, within ``TOLERANCE``
of how far the two resumed steps move the weights (a resume that lost any state misses by far more).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from gan.dsp.audio import read_audio, to_mono, write_audio
from gan.train.run import run_from_args

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "tests" / "data" / "legacy_run"
TOLERANCE = 0.02  # distance from the stored weights / distance moved in steps 4-6 (both Frobenius norms)


def _legacy_run(tmp_path: Path) -> Path:
    audio = tmp_path / "audio"
    for name in ["loop_amen", "guit_em9"]:  # the recordings the run was trained on, as it cut them
        x, sr = read_audio(ROOT / "data" / "demo" / f"{name}.flac")
        write_audio(audio / f"{name}.wav", to_mono(x)[None, : int(1.5 * sr)], sr)
    run = tmp_path / "run"
    shutil.copytree(LEGACY, run, ignore=shutil.ignore_patterns("expected_*"))
    for cfg in run.rglob("config.yaml"):
        text = cfg.read_text().replace("@AUDIO_DIR@", str(audio)).replace("@CACHE_DIR@", str(tmp_path / "cache"))
        cfg.write_text(text)
    return run


def test_a_legacy_checkpoint_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = _legacy_run(tmp_path)
    trainer = run_from_args(str(run / "config.yaml"), str(run), ["trainer.max_steps=6", "trainer.save_every=2"],
                            "auto")
    assert trainer.step == 4
    trainer.train()
    trainer.close()
    step6 = run / "checkpoints" / "step_000000006"
    for net in ("generator", "discriminator"):
        expected = load_file(LEGACY / f"expected_step6_{net}.safetensors")
        got = load_file(step6 / ("model.safetensors" if net == "generator" else "model_1.safetensors"))
        assert expected.keys() == got.keys(), net
        at_4 = load_file(LEGACY / "checkpoints" / "step_000000004" /
                         ("model.safetensors" if net == "generator" else "model_1.safetensors"))
        error = sum(float((got[k] - expected[k]).square().sum()) for k in expected) ** 0.5
        moved = sum(float((expected[k] - at_4[k]).square().sum()) for k in expected) ** 0.5
        assert error <= TOLERANCE * moved, (net, error, moved)
