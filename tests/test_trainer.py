"""Trainer: stage switch, which network a step changes, exact resume, preemption, logs, guards."""
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from gan.train.checkpoint import CheckpointError, resolve_resume
from gan.config import config_from_dict
from gan.train.gan_step import ADVERSARIAL, PRETRAIN, NonFiniteError, stage_at
from gan.train.trainer import Trainer
from helpers import (PY, assert_same_weights, make_loss_nan, make_trainer, run_launch, start_endless_run, tiny_dict,
                     write_config)


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module) -> bool:
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_stage_is_a_pure_function_of_the_step():
    assert stage_at(0, 3) == PRETRAIN and stage_at(2, 3) == PRETRAIN
    assert stage_at(3, 3) == ADVERSARIAL and stage_at(10**6, 3) == ADVERSARIAL
    assert stage_at(0, 0) == ADVERSARIAL


def test_warmup_step_changes_only_g_and_adversarial_step_changes_both(tiny_data, tmp_path):
    from gan.data.loader import make_train_loader

    tr = make_trainer(tiny_data, tmp_path / "run")
    batch = next(iter(make_train_loader(tr.cache_dir, tr.cfg.data, 0, 1)))
    g0, d0 = params(tr.G), params(tr.D)
    logs = tr.train_step([batch])
    assert changed(g0, tr.G) and not changed(d0, tr.D)
    assert "train/g/mel" in logs and "train/g/adv" not in logs and "train/d/total" not in logs
    tr.step = 3  # the first adversarial step
    g1, d1 = params(tr.G), params(tr.D)
    logs = tr.train_step([batch])
    assert changed(g1, tr.G) and changed(d1, tr.D)
    for key in ("train/g/adv", "train/g/feat", "train/d/total", "train/grad_norm/d", "train/g/adv/mpd_2"):
        assert key in logs, key
    tr.close()


def test_resume_is_bit_identical_across_the_stage_switch(tiny_data, tmp_path):
    # one go: 6 steps (3 warmup + 3 adversarial), checkpoints at 3 and 6
    tr = make_trainer(tiny_data, tmp_path / "a", ema_decay=0.9)
    tr.train()
    tr.close()
    ckpt = tmp_path / "a" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_000000006"
    # stopped at 3 (the switch), resumed in a new run dir for the remaining 3
    tr = make_trainer(tiny_data, tmp_path / "b", resume=ckpt / "step_000000003", ema_decay=0.9)
    assert tr.step == 3
    tr.train()
    tr.close()
    assert_same_weights(ckpt / "step_000000006", tmp_path / "b" / "checkpoints" / "step_000000006")
    # training time adds up over resumptions, for quality-against-time curves
    seconds = {run: torch.load(tmp_path / run / "checkpoints" / "step_000000006" / "generator.pt")["train_seconds"]
               for run in "ab"}
    at_3 = torch.load(ckpt / "step_000000003" / "trainer_state.pt", weights_only=False)["train_seconds"]
    assert 0 < at_3 < seconds["a"] and at_3 < seconds["b"]

    # the TensorBoard events hold scalars, an audio tab and spectrogram images
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "a" / "tb"), size_guidance={"audio": 0, "images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("train/g/mel", "train/g/adv", "train/d/total", "train/grad_norm/g", "train/lr/g",
                "perf/samples_per_s", "val/mel_distance", "val/si_sdr_improvement"):
        assert tag in tags["scalars"], tag
    assert {"audio/0/enhanced", "audio/0/clean", "audio/0/degraded"} <= set(tags["audio"])
    assert "spec/0" in tags["images"]
    assert len(ea.Audio("audio/0/enhanced")) == 2  # at steps 3 and 6

    # a config that changes model shapes refuses to resume; max_steps may change
    with pytest.raises(CheckpointError, match="different generator config"):
        make_trainer(tiny_data, tmp_path / "c", resume=ckpt / "step_000000003", ema_decay=0.9,
                     overrides=["generator.channels=8"])
    tr = make_trainer(tiny_data, tmp_path / "d", resume=ckpt / "step_000000003", ema_decay=0.9, max_steps=8)
    assert tr.step == 3
    tr.close()


def test_kill_during_checkpoint_save_keeps_latest_valid(tiny_data, tmp_path, monkeypatch):
    tr = make_trainer(tiny_data, tmp_path / "run")
    tr.save()
    tr.step = 1

    def dies(path, *a, **k):
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(tr.accelerator, "save_state", dies)
    with pytest.raises(KeyboardInterrupt):
        tr.save()
    assert resolve_resume(tmp_path / "run", "auto").name == "step_000000000"
    tr.close()


def test_nonfinite_guard_skips_then_stops(tiny_data, tmp_path, monkeypatch):
    from gan.data.loader import make_train_loader

    tr = make_trainer(tiny_data, tmp_path / "run", max_nonfinite_skips=2)
    batch = next(iter(make_train_loader(tr.cache_dir, tr.cfg.data, 0, 1)))
    forward = tr.reconstruction.forward
    make_loss_nan(tr, monkeypatch)
    g0 = params(tr.G)
    logs = tr.train_step([batch])
    assert not changed(g0, tr.G)
    assert logs["train/skipped/g"] == 1 and tr.gan_step.nonfinite["g"] == 1
    with pytest.raises(NonFiniteError, match="non-finite for 2 steps"):
        tr.train_step([batch])
    monkeypatch.setattr(tr.reconstruction, "forward", forward)
    tr.gan_step.nonfinite["g"] = 0
    tr.train_step([batch])
    assert changed(g0, tr.G) and tr.gan_step.nonfinite["g"] == 0
    tr.close()


@pytest.mark.slow
def test_sigterm_saves_and_resume_auto_continues(tiny_data, tmp_path):
    proc, cmd, run = start_endless_run(tiny_data, tmp_path, settle=3.0)
    os.killpg(proc.pid, signal.SIGTERM)  # as a cluster scheduler preempts: the whole process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by signal" in out
    stopped = int(resolve_resume(run, "auto").name.split("_")[1])
    assert 0 < stopped < 100000
    more = subprocess.run(cmd + ["--resume", "auto", "--set", f"trainer.max_steps={stopped + 2}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stdout + more.stderr
    assert "resumed from" in more.stderr
    assert resolve_resume(run, "auto").name == f"step_{stopped + 2:09d}"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("processes", [2, 3])
def test_multi_process_resume_is_exact(tiny_data, tmp_path, processes):
    # 3 processes: gloo sums a gradient bucket in chunks, so the order of a sum depends on where a gradient
    # sits in its bucket; a resumed run must bucket like the run that never stopped
    cfg = write_config(tiny_data, tmp_path / "c.yaml")
    port = str(29500 + (os.getpid() + processes) % 1000)
    launch = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
              str(ROOT / "launch" / "train.py"), "--config", str(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a = run_launch(launch + ["--run-dir", str(tmp_path / "a")], fresh=(tmp_path / "a",), cwd=ROOT, timeout=600,
                   env=env)
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    assert "did not find any unused parameters" not in a.stdout + a.stderr  # expected, so not shown
    ckpt = tmp_path / "a" / "checkpoints"
    b = run_launch(launch + ["--run-dir", str(tmp_path / "b"), "--resume", str(ckpt / "step_000000003")],
                   fresh=(tmp_path / "b",), cwd=ROOT, timeout=600, env=env)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    assert (ckpt / "step_000000006" / "random_states_1.pkl").is_file()  # every rank's RNG is saved
    assert_same_weights(ckpt / "step_000000006", tmp_path / "b" / "checkpoints" / "step_000000006")


@pytest.mark.slow
def test_bench_train_prints_one_json_object(tiny_data, tmp_path):
    import json

    cfg = write_config(tiny_data, tmp_path / "c.yaml")
    out = subprocess.run([PY, str(ROOT / "launch" / "bench.py"), "train", "--config", str(cfg), "--steps", "1",
                          "--untimed", "0", "--before", "data.batch_size=4"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    both = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert both["before"]["batch_size"] == 4 and both["after"]["batch_size"] != 4
    steps_per_s = {k: both[k]["steps_per_s"]["pretrain"] for k in ("before", "after")}
    assert both["speedup"]["pretrain"] == steps_per_s["after"] / steps_per_s["before"]
    result = both["after"]
    for stage in ("pretrain", "adversarial"):
        assert result["steps_per_s"][stage] > 0 and result["samples_per_s"][stage] > 0
    assert {"g_fwd_bwd", "d_fwd_bwd", "optimizer", "data"} <= set(result["adversarial"]["time_split_s_per_step"])


def test_fresh_start_in_a_run_dir_with_checkpoints_is_refused(tiny_data, tmp_path):
    tr = make_trainer(tiny_data, tmp_path / "run")
    tr.save()
    tr.close()
    with pytest.raises(CheckpointError, match="already holds checkpoints; continue it with --resume auto"):
        make_trainer(tiny_data, tmp_path / "run")


def test_validation_without_val_data_is_skipped(tiny_data, tmp_path):
    tr = make_trainer(tiny_data, tmp_path / "run")
    tr.validator.val_set = {"clean": torch.zeros(0, 1, 10), "degraded": torch.zeros(0, 1, 10), "shift": torch.zeros(0)}
    assert tr.validate() == {}
    tr.close()


def test_logged_lr_is_the_one_the_step_used(tiny_data, tmp_path):
    from gan.data.loader import make_train_loader

    tr = make_trainer(tiny_data, tmp_path / "run", overrides=["optim.generator.scheduler.warmup_steps=4"])
    batch = next(iter(make_train_loader(tr.cache_dir, tr.cfg.data, 0, 1)))
    logs = tr.train_step([batch])
    assert logs["train/lr/g"] == pytest.approx(tr.cfg.optim.generator.lr * 1 / 4)  # step 0 of a 4-step warmup
    tr.close()


def _events(tb: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb), size_guidance={"audio": 0, "images": 0, "scalars": 0})
    ea.Reload()  # applies the purge of a resumed writer
    tags = ea.Tags()
    steps = {("scalars", t): [e.step for e in ea.Scalars(t)] for t in tags["scalars"] if not t.startswith("perf/")}
    steps.update({("audio", t): [e.step for e in ea.Audio(t)] for t in tags["audio"]})
    steps.update({("images", t): [e.step for e in ea.Images(t)] for t in tags["images"]})
    return steps


def test_tensorboard_of_a_resumed_run_equals_an_uninterrupted_one(tiny_data, tmp_path):
    tr = make_trainer(tiny_data, tmp_path / "a")
    tr.train()
    tr.close()
    tr = make_trainer(tiny_data, tmp_path / "b", max_steps=3)  # stops at the checkpoint and validation of step 3
    tr.train()
    tr.close()
    tr = make_trainer(tiny_data, tmp_path / "b", resume=tmp_path / "b" / "checkpoints" / "step_000000003")
    tr.train()
    tr.close()
    straight, resumed = _events(tmp_path / "a" / "tb"), _events(tmp_path / "b" / "tb")
    assert straight[("scalars", "val/mel_distance")] == [3, 6]
    assert resumed == straight


def test_generator_pretraining_then_adversarial_continuation_equals_one_run(tiny_data, tmp_path):
    """A generator-only run (max_steps <= pretrain_steps) continued with a larger max_steps equals one straight run."""
    tr = make_trainer(tiny_data, tmp_path / "a")  # 3 generator-only + 3 adversarial steps
    tr.train()
    tr.close()
    tr = make_trainer(tiny_data, tmp_path / "b", max_steps=3)  # pretraining only: D never steps
    d0 = params(tr.D)
    tr.train()
    assert not changed(d0, tr.D)
    tr.close()
    tr = make_trainer(tiny_data, tmp_path / "b", resume=tmp_path / "b" / "checkpoints" / "step_000000003")
    tr.train()
    tr.close()
    assert_same_weights(tmp_path / "a" / "checkpoints" / "step_000000006",
                        tmp_path / "b" / "checkpoints" / "step_000000006")


def test_identical_runs_write_identical_checkpoints(tiny_data, tmp_path):
    """Python's, NumPy's and torch's generators are all seeded from trainer.seed."""
    import random

    for name in ("a", "b"):
        random.random(), np.random.random()  # whatever ran before must not matter
        tr = make_trainer(tiny_data, tmp_path / name, max_steps=2, pretrain_steps=1, save_every=2)
        tr.train()
        tr.close()
    states = [torch.load(tmp_path / n / "checkpoints" / "step_000000002" / "random_states_0.pkl", weights_only=False)
              for n in ("a", "b")]
    assert states[0]["random_state"] == states[1]["random_state"]
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(states[0]["numpy_random_seed"], states[1]["numpy_random_seed"]))
    assert torch.equal(states[0]["torch_manual_seed"], states[1]["torch_manual_seed"])
    assert_same_weights(tmp_path / "a" / "checkpoints" / "step_000000002", tmp_path / "b" / "checkpoints" / "step_000000002")


def test_resume_takes_the_runs_own_config_and_only_mid_run_changes(tiny_data, tmp_path, capsys, monkeypatch):
    from gan.config import ConfigError
    from gan.train.run import run_from_args

    monkeypatch.chdir(tmp_path)
    cfg = write_config(tiny_data, tmp_path / "c.yaml", max_steps=3)
    tr = run_from_args(str(cfg), "runs/mine", [], None)
    tr.train()
    tr.close()
    assert "fresh start; run directory runs/mine; cpu x 1 process" in capsys.readouterr().err
    # the user edits the file afterwards and forgets an override: the run keeps its own settings
    write_config(tiny_data, tmp_path / "c.yaml", max_steps=3, pretrain_steps=1, log_every=2)
    tr = run_from_args("runs/mine/config.yaml", None, ["trainer.max_steps=5"], "auto")  # its own config.yaml
    out = capsys.readouterr().err
    assert tr.run_dir == Path("runs/mine") and tr.step == 3
    assert tr.cfg.trainer.pretrain_steps == 3 and tr.cfg.trainer.log_every == 1 and tr.cfg.trainer.max_steps == 5
    assert "resume: trainer.max_steps 3 -> 5" in out and "resumed from runs/mine/checkpoints/step_000000003" in out
    tr.close()
    with pytest.raises(ConfigError, match=r"--set data.segment_length: cannot change when resuming at step 3"):
        run_from_args(str(cfg), "runs/mine", ["data.segment_length=4096"], "auto")
    with pytest.raises(ConfigError, match=r"--set trainer.pretrain_steps: cannot change"):  # boundary passed
        run_from_args(str(cfg), "runs/mine", ["trainer.pretrain_steps=2"], "auto")


def test_init_from_starts_a_new_run_from_another_runs_weights(tiny_data, tmp_path, capsys):
    tr = make_trainer(tiny_data, tmp_path / "a", max_steps=3)
    tr.train()
    g, d = params(tr.accelerator.unwrap_model(tr.G)), params(tr.accelerator.unwrap_model(tr.D))
    tr.close()
    cfg = config_from_dict(tiny_dict(*tiny_data))
    tr = Trainer(cfg, tmp_path / "b", progress=False, init_from=tmp_path / "a")
    assert tr.step == 0 and not tr.opt_g.state  # fresh optimizer and schedule
    assert not changed(g, tr.accelerator.unwrap_model(tr.G)) and not changed(d, tr.accelerator.unwrap_model(tr.D))
    assert "initialised the generator and discriminator from" in capsys.readouterr().err
    tr.close()
    with pytest.raises(CheckpointError, match="its generator weights do not fit .*size mismatch for"):
        Trainer(config_from_dict(tiny_dict(*tiny_data), ["generator.channels=8"]), tmp_path / "c", progress=False,
                init_from=tmp_path / "a")


def test_init_from_adds_a_classifier_or_a_conditioning_fresh(tiny_data, tmp_path, capsys):
    base = ["generator.residual=true", "generator.output_activation=none", "data.unknown_fraction=0"]
    tr = make_trainer(tiny_data, tmp_path / "a", overrides=[*base, "generator.band_gain={}"], max_steps=1)
    tr.train()
    g = params(tr.accelerator.unwrap_model(tr.G))
    tr.close()
    tr = Trainer(config_from_dict(tiny_dict(*tiny_data), [*base, "generator.band_gain={detect: {}}"]),
                 tmp_path / "b", progress=False, init_from=tmp_path / "a")
    tuned = tr.accelerator.unwrap_model(tr.G)
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in g.items())
    assert "new in this generator: band_gain.detection, started fresh" in capsys.readouterr().err
    tr.close()
    with pytest.raises(CheckpointError, match=r"1[0-9]* missing or unexpected, e.g. band_gain\."):
        Trainer(config_from_dict(tiny_dict(*tiny_data), base), tmp_path / "c", progress=False,
                init_from=tmp_path / "a")


def test_automatic_threads_leave_busy_cores_free(monkeypatch):
    import os

    from gan.cpu import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("gan.cpu.usable_cores", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # another job busy on one core
    assert cpu_threads(0) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cpu_threads(0) == 2 and cpu_threads(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads(0) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_threads(0) == 4


def test_a_plain_cpu_run_prints_no_deepspeed_warning(tiny_data, tmp_path):
    cfg = write_config(tiny_data, tmp_path / "c.yaml", max_steps=1, pretrain_steps=1)
    out = subprocess.run([PY, str(ROOT / "launch" / "train.py"), "--config", str(cfg), "--run-dir",
                          str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Setting accelerator to CPU" not in out.stdout + out.stderr
    assert "fresh start; run directory" in out.stderr


def test_ddps_expected_unused_parameters_warning_is_dropped_and_other_output_kept(tmp_path):
    # a fresh process: torch prints the warning once per process, from C++
    script = f"""
import os, torch, torch.distributed as dist
from gan.train.backend import quiet_unused_parameters_warning

class Loud(torch.nn.Linear):
    def forward(self, x):
        os.write(2, b"a line of the model's own\\n")
        return super().forward(x)

dist.init_process_group("gloo", init_method="file://{tmp_path / 'pg'}", rank=0, world_size=1)
model = torch.nn.parallel.DistributedDataParallel(Loud(3, 1), find_unused_parameters=True)
quiet_unused_parameters_warning(model)
with torch.no_grad():
    model(torch.ones(2, 3))  # no search for unused parameters: the filter waits for a training forward
for _ in range(2):
    model(torch.ones(2, 3)).sum().backward()
assert not model._forward_hooks and not model._forward_pre_hooks
dist.destroy_process_group()
"""
    out = subprocess.run([PY, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "did not find any unused parameters" not in out.stderr
    assert out.stderr.count("a line of the model's own") == 3


def test_a_run_says_its_splits_each_validation_and_a_closing_line(tiny_data, tmp_path, capsys):
    import re

    from gan.train.validator import val_line

    assert val_line(250, {"val/mel_distance": 1.123, "val/mel_distance_degraded": 1.161}) == \
        "val step 250: mel 1.123 (input 1.161, +3.3 % closer)"
    run = tmp_path / "run"
    tr = make_trainer(tiny_data, run, max_steps=4, pretrain_steps=4, val_every=2)
    tr.train()
    tr.close()
    err = capsys.readouterr().err
    assert f"data: cache {tiny_data[1]}: train 3 files (4.5 s), val 1 file (1.5 s) by data.val_fraction 0.25" in err
    vals = re.findall(r"^val step (\d): mel (\d\.\d{3}) \(input (\d\.\d{3}), ([+-]\d+\.\d) % closer\)$", err, re.M)
    assert [v[0] for v in vals] == ["2", "4"]
    assert all(v[2] == vals[0][2] for v in vals)  # the same degraded input each time
    last = f"val step 4: mel {vals[1][1]} (input {vals[1][2]}, {vals[1][3]} % closer)"
    assert re.search(rf"^done: steps 0 -> 4 in \d+\.\d min; last {re.escape(last)}; checkpoint "
                     rf"{run / 'checkpoints' / 'step_000000004'}; curves: tensorboard --logdir {run / 'tb'}$", err, re.M)


def test_an_empty_validation_split_is_said_at_start(tmp_path, capsys):
    from gan.data.preprocess import ensure_cache
    from gan.dsp.audio import read_audio, to_mono, write_audio
    from gan.train.validator import Validator
    from conftest import DEMO_AUDIO

    x, sr = read_audio(DEMO_AUDIO / "loop_amen.flac")  # one file: it goes to the training split
    write_audio(tmp_path / "audio" / "loop_amen.wav", to_mono(x)[None, : int(1.5 * sr)], sr)
    cfg = config_from_dict(tiny_dict(tmp_path / "audio", tmp_path / "cache"))
    ensure_cache(cfg.data, progress=False, num_workers=0)
    capsys.readouterr()
    validator = Validator(cfg, tmp_path / "cache", torch.device("cpu"), runlog=None, enabled=True)
    assert capsys.readouterr().err.splitlines() == [
        f"data: cache {tmp_path / 'cache'}: train 1 file (1.5 s), val 0 files (0.0 s) by data.val_fraction 0.25",
        "note: the validation split is empty (data.val_fraction 0.25; a file goes wholly to one split): no val/ "
        "scalars, audio or validation lines in this run; add recordings to data.audio_dir"]
    assert validator(torch.nn.Identity(), 3) == {}


def test_compiled_activations_fall_back_without_a_compiler(tiny_data, tmp_path, monkeypatch, caplog):
    """trainer.compile_activations on a CPU without a C++ compiler: one note, the activations run uncompiled."""
    from generators.layers import Snake1d

    monkeypatch.setattr("gan.train.trainer.shutil.which", lambda name: None)
    tr = make_trainer(tiny_data, tmp_path / "run", overrides=["trainer.compile_activations=true"])
    snakes = [m for m in tr.generator_for_inference().modules() if isinstance(m, Snake1d)]
    assert snakes and not any(m.fused for m in snakes)
    assert "no C++ compiler found" in caplog.text
    tr.close()
    monkeypatch.undo()
    tr = make_trainer(tiny_data, tmp_path / "run2", overrides=["trainer.compile_activations=true"])
    assert all(m.fused for m in tr.generator_for_inference().modules() if isinstance(m, Snake1d))
    tr.close()
