"""Guards of a running training: one training per run directory (refused while the first runs, never after),
and Ctrl-C pressed again while a stop completes."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from gan.train.checkpoint import CheckpointError, resolve_resume
from gan.train.lock import RunDirError
from helpers import PY, make_trainer, run_launch, start_endless_run, write_config

sys.path.insert(0, str(ROOT / "launch"))

HOLD = ("import sys, time; from gan.train.lock import RunDirLock; RunDirLock.acquire(sys.argv[1]); "
        "print('held', flush=True); time.sleep(300)")


def _holder(run) -> subprocess.Popen:
    """Another process holding ``run``'s lock, as a running training does."""
    proc = subprocess.Popen([PY, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def _busy_line(run, pid: int) -> str:
    return (rf"error: run directory {re.escape(str(run))} is in use by another training \(pid {pid} on host "
            rf"{re.escape(socket.gethostname())}, since [0-9-]+ [0-9:]+\); wait for it to end or stop it, or pick "
            r"another --run-dir")


def test_a_second_start_is_refused_until_the_first_is_killed(tiny_data, tmp_path, capsys):
    import train

    cfg = write_config(tiny_data, tmp_path / "c.yaml", max_steps=1, pretrain_steps=1)
    run = tmp_path / "run"
    args = ["--config", str(cfg), "--run-dir", str(run)]
    holder = _holder(run)
    try:
        for extra in ([], ["--resume", "auto"]):  # fresh or resumed: one history per directory
            assert train.main(args + extra) == 2
            err = capsys.readouterr().err.splitlines()
            assert len(err) == 1 and re.fullmatch(_busy_line(run, holder.pid), err[0]), err
    finally:
        holder.kill()  # kill -9: nothing is cleaned up, the kernel drops the lock
        holder.wait()
    assert not (run / "tb").exists() and not (run / "config.yaml").exists()  # the refused starts wrote nothing
    assert train.main(args) == 0
    assert "fresh start" in capsys.readouterr().err
    assert (run / "checkpoints" / "latest").is_file()


def test_one_trainer_per_run_directory_within_a_process_too(tiny_data, tmp_path):
    a = make_trainer(tiny_data, tmp_path / "run")
    with pytest.raises(RunDirError, match=f"pid {os.getpid()} on host"):
        make_trainer(tiny_data, tmp_path / "run")
    a.save()
    a.close()  # frees the directory
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        make_trainer(tiny_data, tmp_path / "run")  # a start refused for another reason frees it too
    b = make_trainer(tiny_data, tmp_path / "run", resume=tmp_path / "run" / "checkpoints" / "step_000000000")
    assert b.step == 0
    b.close()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_multi_process_launch_takes_one_lock_and_every_rank_stops(tiny_data, tmp_path):
    cfg = write_config(tiny_data, tmp_path / "c.yaml", max_steps=1, pretrain_steps=1)
    run = tmp_path / "run"
    launch = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(29500 + os.getpid() % 1000),
              str(ROOT / "launch" / "train.py"), "--config", str(cfg), "--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = _holder(run)
    try:
        out = subprocess.run(launch, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    finally:
        holder.kill()
        holder.wait()
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode != 0 and len(errors) == 1, out.stderr[-3000:]
    assert re.fullmatch(_busy_line(run, holder.pid), errors[0])
    done = run_launch(launch, fresh=(run,), cwd=ROOT, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "checkpoints" / "step_000000001").is_dir()


@pytest.mark.slow
def test_ctrl_c_pressed_again_while_stopping_changes_nothing(tiny_data, tmp_path):
    proc, _, run = start_endless_run(tiny_data, tmp_path)
    presses = 0
    while proc.poll() is None and presses < 200:  # an impatient user: Ctrl-C every 20 ms until it has exited
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: the whole foreground process group
        presses += 1
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and presses > 3, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    stopped = int(re.search(r"stopped by signal at step (\d+)", out).group(1))
    notes = re.findall(r"already stopping: the checkpoint of step (\d+) is being written; the run then exits "
                       r"\(pressing Ctrl-C again changes nothing\)", out)
    assert notes == [str(stopped)], out[-3000:]  # said once, however often pressed
    assert resolve_resume(run, "auto").name == f"step_{stopped:09d}"  # complete: latest names it


def test_a_filesystem_without_locks_runs_unlocked_and_an_unwritable_run_dir_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from gan.train.lock import RunDirLock

    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match=r"^run directory .*file/run: cannot be created or written \(Not a "
                                          r"directory\); pick another --run-dir$"):
        RunDirLock.acquire(tmp_path / "file" / "run")

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr("fcntl.flock", no_locks)
    assert RunDirLock.acquire(tmp_path / "run") is None
    assert "its filesystem has no locks (No locks available); make sure no other training" in capsys.readouterr().err
