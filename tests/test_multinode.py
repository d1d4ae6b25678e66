"""Two machines on one: two ``accelerate launch --num_machines 2`` (2 processes each, gloo on CPU).

Each "machine" runs in its own working directory. Without a shared filesystem each has its
own cache folder and run directory: each machine builds its cache once, and each holds
complete checkpoints to resume from. With a shared one (one cache folder, one run
directory) the cache is built once and one process writes the checkpoints.
"""
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from helpers import PY, assert_same_weights, tiny_dict

STEP = "step_{:09d}"
OWN_COPY = "this machine keeps its own copy of every checkpoint"


def launch_machines(machines: list[Path], cache_dirs: list[Path], run_dirs: list[Path], audio: Path,
                    port: int, args: tuple = (), timeout: float = 600) -> list[str]:
    """Start machine 0 and machine 1 at once (each in its folder, with its config); -> their outputs."""
    procs = []
    for rank, (cwd, cache, run) in enumerate(zip(machines, cache_dirs, run_dirs)):
        cwd.mkdir(parents=True, exist_ok=True)
        cfg = cwd / "c.yaml"
        # 3 steps: 2 generator-only, then the first adversarial one
        cfg.write_text(yaml.safe_dump(tiny_dict(audio, cache, max_steps=3, pretrain_steps=2, save_every=3,
                                                val_every=1000)))
        cmd = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--machine_rank", str(rank), "--num_processes", "4", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               str(ROOT / "launch" / "train.py"), "--config", str(cfg), "--run-dir", str(run), *args]
        procs.append(subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
    outs = []
    deadline = time.monotonic() + timeout
    for p in procs:
        outs.append(p.communicate(timeout=max(1, deadline - time.monotonic()))[0])
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    return outs


def builds(out: str, cache: Path) -> int:
    """Cache builds a machine's output reports (the summary line of ``build_cache``)."""
    return sum(line.startswith(f"cache {cache}: ") and " files of " in line for line in out.splitlines())


@pytest.mark.slow
@pytest.mark.distributed
def test_two_machines_without_and_with_a_shared_filesystem(tiny_data, tmp_path):
    audio = tiny_data[0]
    port = 30500 + os.getpid() % 1000
    m = [tmp_path / "machine0", tmp_path / "machine1"]

    # no shared filesystem: a cache folder and a run directory per machine (same relative path)
    caches = [m[0] / "cache", m[1] / "cache"]
    runs = [Path("run"), Path("run")]
    outs = launch_machines(m, caches, runs, audio, port)
    assert [builds(outs[r], caches[r]) for r in (0, 1)] == [1, 1], outs  # once per machine, by its first process
    assert builds(outs[0], caches[1]) + builds(outs[1], caches[0]) == 0
    ckpt = [m[r] / "run" / "checkpoints" for r in (0, 1)]
    for r in (0, 1):  # every machine holds a complete checkpoint, with its own processes' RNG states
        assert (ckpt[r] / "latest").read_text().strip() == STEP.format(3)
        assert {p.name for p in (ckpt[r] / STEP.format(3)).glob("random_states_*.pkl")} == {
            f"random_states_{2 * r}.pkl", f"random_states_{2 * r + 1}.pkl"}
    assert_same_weights(ckpt[0] / STEP.format(3), ckpt[1] / STEP.format(3))
    assert [OWN_COPY in out for out in outs] == [False, True]

    # each machine resumes from its own copy
    outs = launch_machines(m, caches, runs, audio, port + 1, ("--resume", "auto", "--set", "trainer.max_steps=4"))
    assert "resumed from" in outs[0] and builds(outs[0], caches[0]) + builds(outs[1], caches[1]) == 0
    assert_same_weights(ckpt[0] / STEP.format(4), ckpt[1] / STEP.format(4))

    # a shared filesystem: one cache folder, one run directory for both machines
    shared = tmp_path / "shared"
    outs = launch_machines(m, [shared / "cache"] * 2, [shared / "run"] * 2, audio, port + 2,
                           ("--set", "trainer.max_steps=1"))
    assert builds(outs[0], shared / "cache") + builds(outs[1], shared / "cache") == 1, outs
    assert not any(OWN_COPY in out for out in outs)
    step = shared / "run" / "checkpoints" / STEP.format(1)
    assert {p.name for p in step.glob("random_states_*.pkl")} == {f"random_states_{i}.pkl" for i in range(4)}
    assert (step / "trainer_state.pt").is_file() and not list(shared.rglob(".main-*"))
