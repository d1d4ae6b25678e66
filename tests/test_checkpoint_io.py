"""Checkpoint files between machines and on full disks: what a GPU wrote loads anywhere; a failed write is one line."""
import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from gan.config import config_from_dict
from gan.inference import load_generator
from gan.train.checkpoint import CheckpointWriteError, write_failure
from gan.train.trainer import Trainer
from helpers import make_trainer, rewrite_as_on_gpu, tiny_dict, write_config


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

    # --resume
    tr = make_trainer(tiny_data, tmp_path / "gpu", resume=step, max_steps=4, pretrain_steps=1, ema_decay=0.9)
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


# ------------------------------------------------------------------ a checkpoint that cannot be written

def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def _write_text_fails_for(name: str, code: int):
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == name:
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)
    return write_text


def test_a_failed_checkpoint_write_is_one_line_and_the_last_checkpoint_stands(tiny_data, tmp_path, monkeypatch):
    tr = make_trainer(tiny_data, tmp_path / "run")
    tr.save()
    files = tr.checkpointer.files
    step = 0
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        writers = {  # every writer of a checkpoint, failing in turn
            "begin": lambda m: m.setattr(Path, "mkdir", _fail_with(code)),
            "save_state": lambda m: m.setattr(tr.accelerator, "save_state", _fail_with(code)),
            "torch.save": lambda m: m.setattr(torch, "save", _fail_with(code)),
            "config.yaml": lambda m: m.setattr(Path, "write_text", _write_text_fails_for("config.yaml", code)),
            "rename": lambda m: m.setattr("os.replace", _fail_with(code)),
            "latest": lambda m: m.setattr("gan.train.checkpoint._atomic_write_text", _fail_with(code)),
        }
        for writer, fail in writers.items():
            step += 1
            tr.step = step
            with monkeypatch.context() as m:
                fail(m)
                with pytest.raises(CheckpointWriteError) as e:
                    tr.save()
            assert str(e.value) == (
                f"step {step}: the checkpoint could not be written to {files.dir} ({os.strerror(code)}); the last "
                f"complete checkpoint, {files.dir / 'step_000000000'}, stands: free space or fix the folder, then "
                "continue with --resume auto"), (code, writer)
            assert files.latest().name == "step_000000000" and files.steps() == [0], (code, writer)
            assert not list(files.dir.glob(".tmp_*")), (code, writer)  # the half-written folder is gone
    tr.step += 1
    assert tr.save() == files.final_dir(tr.step) == files.latest()  # space again: saving works
    tr.close()


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs the test sizes itself (``remount(kib)``); skipped where mounting needs privileges this user lacks."""
    import subprocess

    where = tmp_path / "run" / "checkpoints"
    where.mkdir(parents=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the writer-failure tests cover the same path")

    def remount(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(where)], check=True, capture_output=True)

    yield remount
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("room_kib", [20, 200])  # full inside a safetensors file / a torch.save file
def test_a_full_filesystem_during_a_save(tiny_data, tmp_path, small_disk, room_kib):
    tr = make_trainer(tiny_data, tmp_path / "run")
    tr.save()
    files = tr.checkpointer.files
    used = shutil.disk_usage(files.dir).used // 1024
    small_disk(used + room_kib)
    tr.step = 1
    with pytest.raises(CheckpointWriteError, match=r"^step 1: the checkpoint could not be written to .* \(No space "
                                                   r"left on device\); the last complete checkpoint, .*step_000000000, "
                                                   "stands"):
        tr.save()
    assert files.latest().name == "step_000000000" and files.steps() == [0]
    assert not list(files.dir.glob(".tmp_*"))
    small_disk(used * 3)
    assert tr.save() == files.latest() == files.final_dir(1)
    tr.close()


def test_the_writers_own_ways_of_saying_disk_full_are_recognised(tmp_path):
    from safetensors import SafetensorError

    full = os.strerror(errno.ENOSPC)
    assert write_failure(OSError(errno.ENOSPC, full), tmp_path) == full
    assert write_failure(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                         tmp_path) == full
    torch_full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert write_failure(torch_full, tmp_path) == "torch.save failed: [enforce fail at inline_container.cc:672] . " \
                                                   "unexpected pos 576 vs 534"  # space left here: said as it is
    assert write_failure(RuntimeError("shape mismatch"), tmp_path) is None  # not a write: propagates
    assert write_failure(ValueError("x"), tmp_path) is None


def test_train_reports_a_full_disk_in_one_line_with_exit_1(tiny_data, tmp_path, monkeypatch, capsys):
    import sys

    from accelerate import Accelerator

    sys.path.insert(0, str(ROOT / "launch"))
    import train

    real, saves = Accelerator.save_state, []

    def second_save_fails(self, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            (Path(path) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", second_save_fails)
    cfg = write_config(tiny_data, tmp_path / "c.yaml")  # checkpoints at steps 3 and 6
    run = tmp_path / "run"
    assert train.main(["--config", str(cfg), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [ln for ln in err if ln.startswith("error:")] == [
        f"error: step 6: the checkpoint could not be written to {run / 'checkpoints'} (No space left on device); the "
        f"last complete checkpoint, {run / 'checkpoints' / 'step_000000003'}, stands: free space or fix the folder, "
        "then continue with --resume auto"]
    assert not any("Traceback" in ln for ln in err)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000000003"]
