"""DeepSpeed ZeRO-1/2 through Accelerate: refusals, two engines equal to the plain trainer, resume, 2 processes.

Single-process tests run in this process with the environment ``accelerate launch``
sets for a DeepSpeed config; the 2-process test launches the real CLI with
configs/accelerate/deepspeed_zero2.yaml over gloo on the CPU.
"""
import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed not installed (make installs it)")

from accelerate.state import AcceleratorState  # noqa: E402

from conftest import ROOT  # noqa: E402
from gan.train import ds  # noqa: E402
from gan.train.checkpoint import CheckpointError  # noqa: E402
from gan.config import ConfigError, config_from_dict  # noqa: E402
from helpers import make_loss_nan, make_trainer, run_launch, tiny_dict, write_config

PY = sys.executable
# The first CPU DeepSpeed run JIT-compiles a shared-memory all-reduce kernel (minutes on
# 2 cores); these tests use gloo's reductions instead (tests/_ds_train.py does the same).
NO_SHM = (importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)


# Exact comparisons hold on the CPU; GPU kernels are not run-to-run deterministic (on an H200,
# 3 steps left up to ~1e-5 of noise in some weights, and two fresh 200-step runs differed as
# much as a run and its resumed copy).
cpu_exact = pytest.mark.skipif(torch.cuda.is_available(), reason="exact comparison needs deterministic CPU kernels")


def _reset_accelerate():
    """Forget the process group and Accelerate's singleton state, so a test can build another kind of run."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    importlib.import_module("deepspeed.utils.groups")._release_process_group_references()  # DeepSpeed's cached groups
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def zero(monkeypatch):
    """``zero(stage)`` sets the environment ``accelerate launch`` gives one process under a DeepSpeed ZeRO config."""
    _reset_accelerate()
    monkeypatch.setattr(*NO_SHM)
    for key in ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_GRADIENT_CLIPPING", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"):
        monkeypatch.delenv(key, raising=False)

    def enable(stage: int = 2) -> None:
        env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage), "RANK": "0",
               "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(29400 + os.getpid() % 500)}
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    yield enable
    _reset_accelerate()
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)  # Accelerate sets it itself, behind monkeypatch


def _cfg(tiny_data, overrides=(), **trainer):
    return config_from_dict(tiny_dict(*tiny_data, **trainer), list(overrides))


# ----------------------------------------------------------------- configuration


def test_muon_is_refused_at_start_with_one_line(tiny_data, tmp_path, zero):
    from gan.train.trainer import Trainer

    zero()
    cfg = _cfg(tiny_data, ["optim.discriminator.name=muon"])
    with pytest.raises(ConfigError) as e:
        Trainer(cfg, tmp_path / "run", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("optim.discriminator.name: muon cannot run under DeepSpeed ZeRO")
    assert "adamw" in msg
    assert not (tmp_path / "run").exists()  # refused before anything was built or written


@pytest.mark.parametrize("ds_config, match", [
    ({"zero_optimization": {"stage": 3}}, "zero_stage 3: unsupported"),
    ({"zero_optimization": {"stage": 0}}, "zero_stage 0: unsupported"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "offload_optimizer_device cpu"),
    ({"zero_optimization": {"stage": 1, "offload_param": {"device": "nvme"}}}, "offload_param_device nvme"),
    ({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}, "enables bf16 weights"),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}, "has a 'optimizer' section"),
])
def test_unsupported_deepspeed_settings_are_refused(tiny_data, ds_config, match):
    with pytest.raises(ConfigError, match=match):
        ds.check_supported(_cfg(tiny_data), ds_config)
    ds.check_supported(_cfg(tiny_data), {"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "none"}}})


def test_plugins_take_clipping_batch_and_accumulation_from_the_config(tiny_data, zero):
    zero()
    cfg = _cfg(tiny_data, ["optim.generator.grad_clip=5.0", "optim.discriminator.grad_clip=null",
                           "trainer.grad_accum=3", "data.batch_size=4"])
    plugins = ds.build_plugins(cfg)
    assert list(plugins) == ["generator", "discriminator"]
    g, d = plugins["generator"].deepspeed_config, plugins["discriminator"].deepspeed_config
    assert g["gradient_clipping"] == 5.0 and d["gradient_clipping"] == 0.0
    for c in (g, d):
        assert c["train_micro_batch_size_per_gpu"] == 4 and c["gradient_accumulation_steps"] == 3
        assert c["zero_optimization"]["stage"] == 2 and "torch_autocast" not in c


def test_launcher_settings_that_conflict_with_the_config_are_refused(tiny_data, zero, monkeypatch):
    zero()
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "1.0")  # one clip for both networks
    with pytest.raises(ConfigError, match=r"gradient_clipping=1.0 conflicts with optim.generator.grad_clip=1000.0"):
        ds.build_plugins(_cfg(tiny_data))
    monkeypatch.delenv("ACCELERATE_GRADIENT_CLIPPING")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="mixed_precision fp16: unsupported"):
        ds.resolve_precision(_cfg(tiny_data))


def test_bf16_from_the_launcher_is_autocast_and_recorded(tiny_data, zero, monkeypatch, capsys):
    zero()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = _cfg(tiny_data)
    assert ds.resolve_precision(cfg) == "bf16" and cfg.trainer.mixed_precision == "bf16"
    assert "bf16 autocast from the accelerate config" in capsys.readouterr().err
    c = ds.build_plugins(cfg)["generator"].deepspeed_config
    assert c["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    cfg = _cfg(tiny_data, mixed_precision="bf16")  # the config alone asks: still bf16
    assert ds.resolve_precision(cfg) == "bf16"


def test_resume_refuses_the_other_backend_and_another_world_size(tmp_path):
    plain, zero_ckpt = tmp_path / "plain", tmp_path / "zero"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"")
    for name in ("pytorch_model", "pytorch_model_1"):
        (zero_ckpt / name).mkdir(parents=True)
        for r in range(2):
            (zero_ckpt / name / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    ds.check_resume(plain, deepspeed=False, world_size=4)
    ds.check_resume(zero_ckpt, deepspeed=True, world_size=2)
    with pytest.raises(CheckpointError, match="written by a DeepSpeed run"):
        ds.check_resume(zero_ckpt, deepspeed=False, world_size=2)
    with pytest.raises(CheckpointError, match="not written by a DeepSpeed run"):
        ds.check_resume(plain, deepspeed=True, world_size=1)
    with pytest.raises(CheckpointError, match="split over 2 processes, this run has 1; resume with 2"):
        ds.check_resume(zero_ckpt, deepspeed=True, world_size=1)


# ----------------------------------------------------------------- engines in one process


def _batches(tr, n):
    from gan.data.loader import make_train_loader

    it = iter(make_train_loader(tr.cache_dir, tr.cfg.data, 0, 1))
    dev = tr.accelerator.device
    return [{k: v.to(dev) for k, v in next(it).items()} for _ in range(n)]


def trainer_weights(tr):
    acc = tr.accelerator
    return {f"{net}.{k}": v.detach().clone() for net, m in (("G", tr.G), ("D", tr.D))
            for k, v in acc.unwrap_model(m).state_dict().items()}


# An lr warmup on both networks and a clip that bites on D: a step that ignored our
# schedules or DeepSpeed's clipping would differ from the plain trainer's.
EQUIV = ["optim.generator.scheduler.warmup_steps=10", "optim.discriminator.scheduler.warmup_steps=5",
         "optim.discriminator.grad_clip=0.05", "optim.generator.grad_clip=0.5"]


def _run_steps(tr, batches, steps, k):
    logs = []
    for i, step in enumerate(steps):
        tr.step = step
        logs.append(tr.train_step(batches[i * k:(i + 1) * k]))
    return logs


@cpu_exact
@pytest.mark.parametrize("stage, accum", [(1, 1), (2, 1), (2, 2)])
def test_zero_engines_step_like_the_plain_trainer(tiny_data, tmp_path, zero, stage, accum):
    """A warmup step, then two adversarial steps, as DeepSpeed engines and as the plain trainer.

    D's second step would carry any gradient the G step left in D (with D not frozen in
    the generator's loss, ZeRO-2 fails with "Gradient computed twice for this partition"
    and ZeRO-1 leaves gradients on D's parameters).
    """
    overrides = EQUIV + [f"trainer.grad_accum={accum}"]
    plain = make_trainer(tiny_data, tmp_path / "plain", overrides=overrides)
    assert plain.backend.name == "accelerate"
    batches = _batches(plain, 3 * accum)
    plain_logs = _run_steps(plain, batches, [2, 3, 4], accum)
    want = trainer_weights(plain)
    plain.close()
    _reset_accelerate()
    zero(stage)
    tr = make_trainer(tiny_data, tmp_path / "zero", overrides=overrides)
    assert type(tr.G).__name__ == "DeepSpeedEngine" and type(tr.D).__name__ == "DeepSpeedEngine"
    assert tr.G.zero_optimization_stage() == stage and tr.D.zero_optimization_stage() == stage
    assert (tr.G.gradient_clipping(), tr.D.gradient_clipping()) == (0.5, 0.05)
    assert tr.G.gradient_accumulation_steps() == accum
    before = trainer_weights(tr)
    logs = _run_steps(tr, batches, [2, 3, 4], accum)
    got = trainer_weights(tr)
    assert any(not torch.equal(before[k], got[k]) for k in got if k.startswith("D."))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    for mine, ref in zip(logs, plain_logs):
        for key in ("train/g/total", "train/grad_norm/g", "train/lr/g", "train/lr/d"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-4), key
    assert logs[2]["train/grad_norm/d"] == pytest.approx(plain_logs[2]["train/grad_norm/d"], rel=1e-4)
    assert logs[2]["train/grad_norm/d"] > 0.05  # the clip was active
    assert all(p.grad is None for p in tr.accelerator.unwrap_model(tr.D).parameters())
    tr.close()


def test_zero2_nonfinite_step_is_skipped_and_counted(tiny_data, tmp_path, zero, monkeypatch):
    zero()
    tr = make_trainer(tiny_data, tmp_path / "run", max_nonfinite_skips=2)
    (batch,) = _batches(tr, 1)
    forward = tr.reconstruction.forward
    make_loss_nan(tr, monkeypatch)
    before = trainer_weights(tr)
    logs = tr.train_step([batch])
    assert all(torch.equal(before[k], v) for k, v in trainer_weights(tr).items())
    assert logs["train/skipped/g"] == 1 and tr.gan_step.nonfinite["g"] == 1
    monkeypatch.setattr(tr.reconstruction, "forward", forward)
    tr.train_step([batch])
    assert tr.gan_step.nonfinite["g"] == 0 and tr.gan_step.skipped_total["g"] == 1
    assert any(not torch.equal(before[k], v) for k, v in trainer_weights(tr).items())
    tr.close()


def test_zero2_bf16_autocast_keeps_fp32_weights(tiny_data, tmp_path, zero):
    zero()
    tr = make_trainer(tiny_data, tmp_path / "run", mixed_precision="bf16")
    (batch,) = _batches(tr, 1)
    tr.step = tr.cfg.trainer.pretrain_steps
    before = trainer_weights(tr)
    logs = tr.train_step([batch])
    after = trainer_weights(tr)
    assert all(v.dtype == torch.float32 for v in after.values())
    assert all(torch.isfinite(torch.tensor(logs[k])) for k in ("train/g/total", "train/d/total"))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("D."))
    tr.close()


@cpu_exact
def test_zero2_resume_is_identical_and_checkpoint_is_deepspeed_format(tiny_data, tmp_path, zero):
    from gan.train.trainer import Trainer

    zero()
    tr = make_trainer(tiny_data, tmp_path / "a", ema_decay=0.9)
    tr.train()  # 6 steps: 3 warmup + 3 adversarial, checkpoints at 3 and 6
    tr.close()
    ckpt = tmp_path / "a" / "checkpoints"
    step3, step6 = ckpt / "step_000000003", ckpt / "step_000000006"
    for engine in ("pytorch_model", "pytorch_model_1"):  # G's and D's engine
        assert (step3 / engine / "mp_rank_00_model_states.pt").is_file()
        assert (step3 / engine / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    assert (step3 / "generator.pt").is_file() and (step3 / "trainer_state.pt").is_file()
    _reset_accelerate()
    tr = make_trainer(tiny_data, tmp_path / "b", resume=step3, ema_decay=0.9)
    assert tr.step == 3
    tr.train()
    tr.close()
    other = tmp_path / "b" / "checkpoints" / "step_000000006"
    for engine in ("pytorch_model", "pytorch_model_1"):
        a = torch.load(step6 / engine / "mp_rank_00_model_states.pt", weights_only=False)["module"]
        b = torch.load(other / engine / "mp_rank_00_model_states.pt", weights_only=False)["module"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), engine
    ga = torch.load(step6 / "generator.pt", weights_only=True)
    gb = torch.load(other / "generator.pt", weights_only=True)
    assert ga["ema"] and all(torch.equal(ga["state_dict"][k], gb["state_dict"][k]) for k in ga["state_dict"])
    # a plain (non-DeepSpeed) run refuses the DeepSpeed checkpoint with a one-line message
    _reset_accelerate()
    with pytest.MonkeyPatch.context() as mp:
        for key in ("ACCELERATE_USE_DEEPSPEED", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            mp.delenv(key)
        with pytest.raises(CheckpointError, match="written by a DeepSpeed run"):
            Trainer(_cfg(tiny_data, ema_decay=0.9), tmp_path / "c", resume=step3, progress=False)


# ----------------------------------------------------------------- two processes


@cpu_exact
@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_zero2_through_accelerate_launch(tiny_data, tmp_path):
    """The real CLI with configs/accelerate/deepspeed_zero2.yaml on 2 CPU processes (gloo).

    Both ranks end with identical weights, ZeRO state is split in two, and a run
    resumed from step 3 ends where the uninterrupted one did.
    """
    cfg = write_config(tiny_data, tmp_path / "c.yaml")
    port = str(29700 + os.getpid() % 200)
    launch = [PY, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml"), "--num_processes", "2",
              "--mixed_precision", "no", "--main_process_port", port,
              str(ROOT / "tests" / "_ds_train.py"), "--config", str(cfg)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["OMP_NUM_THREADS"] = "1"

    def run(*args: str) -> str:
        done = run_launch(launch + list(args), fresh=(Path(args[args.index("--run-dir") + 1]),), cwd=ROOT,
                          timeout=600, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stderr  # messages (gan.log) go to stderr

    run("--run-dir", str(tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints"
    assert "resumed from" in run("--run-dir", str(tmp_path / "b"), "--resume", str(ckpt / "step_000000003"))
    for engine in ("pytorch_model", "pytorch_model_1"):
        shards = sorted(p.name for p in (ckpt / "step_000000006" / engine).glob("*optim_states.pt"))
        assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    runs = {run: [torch.load(tmp_path / run / f"rank{r}.pt", weights_only=False) for r in range(2)]
            for run in ("a", "b")}
    ref = runs["a"][0]
    assert ref["engines"] and ref["world"] == 2 and ref["step"] == 6
    for run, ranks in runs.items():
        for r, got in enumerate(ranks):
            for net in ("G", "D"):
                for k in ref[net]:
                    assert torch.equal(got[net][k], ref[net][k]), (run, r, net, k)
