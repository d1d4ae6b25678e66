"""Starting and resuming a run from command-line arguments (``gan.train.run``): no training needed."""
import logging
from pathlib import Path

import pytest

from gan.config import ConfigError, config_from_dict, dump_config
from gan.train.run import resume_config, run_from_args
from helpers import tiny_dict, write_config


@pytest.fixture
def log_lines(caplog):
    caplog.set_level(logging.INFO, logger="unshift")
    logging.getLogger("unshift").addHandler(caplog.handler)  # the project's root logger does not propagate
    yield lambda: [r.getMessage() for r in caplog.records]
    logging.getLogger("unshift").removeHandler(caplog.handler)


def _checkpoint(tmp_path: Path, step: int, overrides=(), run: str = "run") -> Path:
    """A step directory of ``tmp_path/run`` holding only the run's config.yaml (all ``resume_config`` reads)."""
    cfg = config_from_dict(tiny_dict(tmp_path / "music", tmp_path / "cache"), list(overrides))
    ckpt = tmp_path / run / "checkpoints" / f"step_{step:09d}"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text(dump_config(cfg))
    (ckpt.parent / "latest").write_text(ckpt.name + "\n")
    return ckpt


def test_a_longer_run_says_how_far_the_learning_rate_jumps_back_up(tmp_path, log_lines):
    ckpt = _checkpoint(tmp_path, 1000, ["trainer.max_steps=1000", "trainer.pretrain_steps=0",
                                        "optim.generator.scheduler.name=cosine",
                                        "optim.generator.scheduler.min_lr_ratio=0.05",
                                        "optim.discriminator.scheduler.name=cosine"])
    resume_config(ckpt, ["trainer.max_steps=2000"])
    # G: lr 1e-3 x 0.05 (the end of the cosine) -> 1e-3 x (0.05 + 0.95 / 2) halfway through the new length;
    # D: its cosine ends at 0 (min_lr_ratio 0), so no ratio
    assert log_lines()[-1] == ("resume: trainer.max_steps 1000 -> 2000; the learning rate at step 1000 changes with "
                               "the schedule's new length: generator 5e-05 -> 0.000525 (10.5x), discriminator "
                               "0 -> 0.0005")
    ckpt = _checkpoint(tmp_path / "exp", 1000, ["trainer.max_steps=1000"])  # exponential: no length in it
    resume_config(ckpt, ["trainer.max_steps=2000"])
    assert log_lines()[-1] == "resume: trainer.max_steps 1000 -> 2000"


def test_a_path_written_otherwise_is_no_change_on_resume(tmp_path, log_lines):
    ckpt = _checkpoint(tmp_path, 3)
    music = tmp_path / "music"
    cfg = resume_config(ckpt, [f"data.audio_dir={music}/", f"data.cache_dir={tmp_path}/x/../cache"])
    assert (cfg.data.audio_dir, cfg.data.cache_dir) == (str(music), str(tmp_path / "cache"))  # the run's spelling
    assert not any(line.startswith("resume:") for line in log_lines())
    with pytest.raises(ConfigError, match=r"--set data.audio_dir: cannot change when resuming at step 3"):
        resume_config(ckpt, [f"data.audio_dir={tmp_path}/other"])


def test_resume_auto_in_a_mistyped_run_directory_names_the_runs_beside_it(tmp_path, monkeypatch, log_lines):
    monkeypatch.setattr("gan.train.run.Trainer", lambda cfg, run_dir, **kw: run_dir)  # no training
    cfg = write_config((tmp_path / "music", tmp_path / "cache"), tmp_path / "c.yaml")
    runs = tmp_path / "runs"
    for name in ("mine", "cpu"):
        _checkpoint(tmp_path, 3, run=f"runs/{name}")
    (runs / "stopped_before_its_first_save").mkdir()
    (tmp_path / "empty").mkdir()
    run_from_args(str(cfg), str(runs / "mien"), [], "auto")
    assert log_lines()[-1] == (f"note: --resume auto: no such folder as {runs / 'mien'}, so this is a fresh start; "
                               f"run directories with checkpoints beside it: {runs / 'cpu'}, {runs / 'mine'}")
    run_from_args(str(cfg), str(tmp_path / "empty"), [], "auto")
    assert log_lines()[-1] == (f"note: --resume auto: no checkpoint in {tmp_path / 'empty'}, so this is a fresh "
                               f"start; no run directory in {tmp_path} holds one")
