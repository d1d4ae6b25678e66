"""Every command the README shows parses as typed (after `source .venv/bin/activate`), with the
configs it names loading and the files it names existing.

Running each for real would take minutes (training, evaluation); what runs for real is in
the other tests (launchers, errors, enhancement, the TensorBoard server).
"""
import importlib
import re
import shlex
import sys

import pytest

from conftest import ROOT
from gan.config import load_config

sys.path.insert(0, str(ROOT / "launch"))
LAUNCHERS = ("train", "preprocess", "enhance", "evaluate", "bench")


def readme_commands() -> list[str]:
    """Lines of the README's code blocks that run a launcher (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if re.search(r"launch/(%s)\.py" % "|".join(LAUNCHERS), line):
                lines.append(line)
    return lines


def test_the_readme_shows_launcher_commands():
    assert len(readme_commands()) >= 12


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses_as_typed(line):
    words = shlex.split(line)
    assert words[0] in ("python", "accelerate"), line  # the venv's python / accelerate after activation
    script = next(w for w in words if w.startswith("launch/"))
    name = script[len("launch/"):-3]
    argv = words[words.index(script) + 1:]
    assert (ROOT / script).is_file()
    module = importlib.import_module(name)
    if name == "bench":
        return  # its sub-commands parse at run time; `make bench` runs them
    args = module.build_parser().parse_args(argv)
    if getattr(args, "config", None):
        load_config(args.config, getattr(args, "overrides", []))
    for flag in ("data", "degraded_dir"):
        value = getattr(args, flag, None)
        if value and value.startswith("data/"):
            assert (ROOT / value).exists(), value
