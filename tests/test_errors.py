"""One error path: every launcher reports every kind of user error as one line and a documented exit code."""
import importlib
import sys

import pytest
import yaml

from conftest import ROOT
from gan.dsp.audio import AudioError
from gan.data.cache import CacheError
from gan.train.checkpoint import CheckpointError
from gan.config import ConfigError
from gan.errors import UnshiftError, run_cli
from gan.train.gan_step import NonFiniteError
from helpers import tiny_dict

sys.path.insert(0, str(ROOT / "launch"))


def launcher(name: str):
    return importlib.import_module(name)


def test_every_user_error_is_an_unshift_error_with_its_exit_code():
    for cls in (AudioError, CacheError, CheckpointError, ConfigError, NonFiniteError):
        assert issubclass(cls, UnshiftError)
    assert NonFiniteError.exit_code == 1 and ConfigError.exit_code == CacheError.exit_code == 2


def one_error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def bad_audio_config(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_dict(audio, tmp_path / "cache")))
    return path


def test_train_reports_a_folder_without_usable_audio(bad_audio_config, tmp_path, capsys):
    assert launcher("train").main(["--config", str(bad_audio_config), "--run-dir", str(tmp_path / "run")]) == 2
    assert "none of its 1 audio files is usable" in one_error_line(capsys)


def test_train_and_preprocess_report_config_and_folder_errors(bad_audio_config, tmp_path, capsys):
    assert launcher("train").main(["--config", str(bad_audio_config), "--set", "trainer.max_stepz=3"]) == 2
    assert "trainer.max_stepz: unknown key" in one_error_line(capsys)
    assert launcher("preprocess").main(["--config", str(bad_audio_config), "--quiet",
                                        "--set", f"data.audio_dir={tmp_path / 'nope'}"]) == 2
    assert "not found; point data.audio_dir" in one_error_line(capsys)


def test_enhance_and_evaluate_report_checkpoint_and_data_errors(tmp_path, capsys):
    assert launcher("enhance").main(["--checkpoint", str(tmp_path / "nope"), "-o", str(tmp_path / "o"),
                                     str(ROOT / "data" / "demo" / "bd_808.flac")]) == 2
    assert "nope" in one_error_line(capsys)
    assert launcher("evaluate").main(["--checkpoint", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 2
    assert "nope" in one_error_line(capsys)


def test_messages_are_one_line_on_stderr_from_the_first_process_only(monkeypatch, capsys):
    from gan.log import get_logger

    log = get_logger("gan.test")
    monkeypatch.setenv("RANK", "0")
    log.info("note: from rank 0")
    monkeypatch.setenv("RANK", "1")
    log.info("note: from rank 1")
    log.info("note: every machine says this", extra={"all_ranks": True})
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["note: from rank 0", "note: every machine says this"]
    assert run_cli(lambda argv: (_ for _ in ()).throw(UnshiftError("bad thing; do this"))) == 2
    assert capsys.readouterr().err == ""  # rank 1 reports nothing; rank 0 does
    monkeypatch.setenv("RANK", "0")
    assert run_cli(lambda argv: (_ for _ in ()).throw(UnshiftError("bad thing; do this"))) == 2
    assert capsys.readouterr().err == "error: bad thing; do this\n"
