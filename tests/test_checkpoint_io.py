"""Checkpoint files between machines and on full disks: what a GPU wrote loads anywhere; a failed write is one line."""
import shutil

import torch

from conftest import ROOT
from gan.config import config_from_dict
from gan.inference import load_generator
from gan.train.trainer import Trainer
from helpers import make_trainer, rewrite_as_on_gpu, tiny_dict


def _run_to_step_3(tiny_data, run):
    tr = make_trainer(tiny_data, run, max_steps=3, pretrain_steps=1, ema_decay=0.9)  # EMA, D steps: all hold tensors
    tr.train()
    tr.close()
    return run / "checkpoints" / "step_000000003"


def test_every_checkpoint_read_maps_files_a_gpu_wrote(tiny_data, tmp_path):
    """Resume (and a checkpoint of an earlier version, same path), init-from a DeepSpeed-style folder, enhance and
    evaluate read files whose storages say ``cuda:0``: on a CPU-only machine too."""
    step = _run_to_step_3(tiny_data, tmp_path / "gpu")
    g = torch.load(step / "generator.pt", map_location="cpu", weights_only=True)["state_dict"]
    for name in ("generator.pt", "trainer_state.pt", "optimizer.bin", "optimizer_1.bin"):
        rewrite_as_on_gpu(step / name)

    loaded = load_generator(tmp_path / "gpu")  # enhance.py, evaluate.py
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in g.items())

    tr = make_trainer(tiny_data, tmp_path / "gpu", resume=step, max_steps=4, pretrain_steps=1, ema_decay=0.9)  # --resume
    assert tr.step == 3 and tr.opt_g.state
    tr.close()

    ds = tmp_path / "ds" / "checkpoints" / step.name  # as DeepSpeed leaves it: no model*.safetensors
    shutil.copytree(step, ds, ignore=shutil.ignore_patterns("model*.safetensors"))
    tr = Trainer(config_from_dict(tiny_dict(*tiny_data)), tmp_path / "tuned", progress=False, init_from=ds)
    unwrapped = tr.accelerator.unwrap_model(tr.G).state_dict()
    assert all(torch.equal(unwrapped[k], v) for k, v in g.items())
    tr.close()


def test_checkpoint_files_are_read_only_through_the_mapping_readers():
    """``torch.load`` and safetensors' loaders appear only in ``read_torch_file`` / ``read_safetensors``."""
    own = ROOT / "gan" / "train" / "checkpoint.py"
    sources = [p for d in ("gan", "launch", "generators", "discriminators") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 30
    for path in sources:
        if path != own:
            text = path.read_text()
            for call in ("torch.load(", "load_file(", "safe_open(", "load_state_dict_from_url("):
                assert call not in text, f"{path.relative_to(ROOT)}: {call} (use gan.train.checkpoint's readers)"
