"""The TensorBoard command that `make demo` prints starts on a fresh install and serves a run's logs."""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from gan.train.runlog import RunLogger


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_tensorboard_serves_scalars_and_audio_of_a_run(tmp_path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    acc = Accelerator(cpu=True, log_with=["tensorboard"],
                      project_config=ProjectConfiguration(project_dir=str(tmp_path), logging_dir=str(tmp_path)))
    log = RunLogger(acc, "tb", sample_rate=48000)
    for step in (1, 2, 3):
        log.scalars({"train/g/mel": 1.0 / step}, step)
    log.audio("audio/0/enhanced", torch.zeros(4800), 3)
    acc.end_training()
    exe = Path(sys.executable).parent / "tensorboard"  # the command make demo prints: .venv/bin/tensorboard
    port = free_port()
    proc = subprocess.Popen([str(exe), "--logdir", str(tmp_path / "tb"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
                if tags:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not answer within 90 s"
            time.sleep(0.5)
        (run,) = tags
        assert "train/g/mel" in tags[run]
        values = get_json(f"{base}/data/plugin/scalars/scalars?run={run}&tag=train/g/mel")
        assert [(v[1], round(v[2], 6)) for v in values] == [(1, 1.0), (2, 0.5), (3, round(1 / 3, 6))]
        assert "audio/0/enhanced" in get_json(f"{base}/data/plugin/audio/tags")[run]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
