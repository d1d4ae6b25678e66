import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO_AUDIO = ROOT / "data" / "demo"

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # trainers in tests take one thread (trainer.threads: 0 = this)
torch.set_num_threads(1)  # tiny models: threads only add contention on small CI machines

import pytest  # noqa: E402

import discriminators  # noqa: E402
import torch.nn as nn  # noqa: E402
import generators  # noqa: E402
from gan.config import config_from_dict  # noqa: E402
from gan.dsp.audio import read_audio, to_mono, write_audio  # noqa: E402
from helpers import StubDiscriminatorConfig, Toy, ToyConfig, tiny_dict  # noqa: E402
from tiny_configs import single_thread  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole test module, the count restored after it (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): tiny models run fastest so, and trainers may change it."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Four 1.5-s excerpts of bundled recordings and the cache built from them once."""
    root = tmp_path_factory.mktemp("tiny")
    audio = root / "audio"
    for name in ["loop_amen", "guit_em9", "ambi_piano", "bass_voxy_c"]:
        x, sr = read_audio(DEMO_AUDIO / f"{name}.flac")
        write_audio(audio / f"{name}.wav", to_mono(x)[None, : int(1.5 * sr)], sr)
    cfg = config_from_dict(tiny_dict(audio, root / "cache"))
    from gan.data.preprocess import ensure_cache

    ensure_cache(cfg.data, progress=False, num_workers=1)
    return audio, root / "cache"


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setitem(generators.REGISTRY, "toy", (Toy, ToyConfig))
    monkeypatch.setitem(discriminators.REGISTRY, "test_disc", (nn.Identity, StubDiscriminatorConfig))
