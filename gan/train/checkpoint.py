"""Run-directory checkpoints: atomic step directories, a ``latest`` pointer, pruning.

Layout::

    runs/<name>/checkpoints/step_000120000/   accelerate save_state files
                                              trainer_state.pt   (step, schedulers, EMA, ...)
                                              generator.pt       (inference weights, EMA when on)
                                              config.yaml        (resolved config)
    runs/<name>/checkpoints/latest            text: name of the newest complete step dir

A checkpoint is written into a hidden temporary directory and renamed into
place only when complete; ``latest`` is replaced atomically after that, so a
kill at any moment leaves the previous checkpoint usable. On several machines without
a shared filesystem every machine writes its own copy (``setup_writers``).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from gan.errors import UnshiftError, first_line
from gan.log import get_logger

log = get_logger(__name__)

STEP_RE = re.compile(r"^step_(\d{9})$")
LATEST = "latest"


class CheckpointError(UnshiftError, ValueError):
    """A checkpoint that cannot be used; the message names it and what to do."""


class CheckpointWriteError(UnshiftError):
    """A checkpoint could not be written (disk full, read-only, permissions, quota); the previous one stands."""

    exit_code = 1  # the run did work; its last complete checkpoint is intact


_TORCH_WRITER = ("inline_container", "PytorchStreamWriter", "file write failed")  # torch.save's archive writer


def write_failure(e: BaseException, folder: Path) -> str | None:
    """Why writing a checkpoint file into ``folder`` failed (e.g. ``No space left on device``), or None when ``e``
    is not a failed write. The writers say it differently: ``OSError`` (Python, Accelerate), ``SafetensorError``
    with the OS error in its text, and ``RuntimeError`` from ``torch.save``'s archive writer, without one.
    """
    if isinstance(e, OSError):
        return e.strerror or first_line(e)
    text = str(e)
    if type(e).__name__ == "SafetensorError":
        code = re.search(r"os error (\d+)", text)
        return os.strerror(int(code.group(1))) if code else first_line(e)
    if isinstance(e, RuntimeError) and any(mark in text for mark in _TORCH_WRITER):
        try:
            full = shutil.disk_usage(folder).free < 2**20
        except OSError:
            full = False
        return os.strerror(errno.ENOSPC) if full else f"torch.save failed: {first_line(e)}"
    return None


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def code_version() -> str:
    """``git describe`` of the source tree when available, else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("unshift")
    except PackageNotFoundError:
        return "unknown"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """Names, finds and prunes checkpoints of one run directory (main process writes)."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3, keep_every: int = 0):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.keep_every = keep_every

    def tmp_dir(self, step: int) -> Path:
        return self.dir / f".tmp_{step_dir_name(step)}"

    def final_dir(self, step: int) -> Path:
        return self.dir / step_dir_name(step)

    def begin(self, step: int) -> Path:
        """A fresh, empty temporary directory for the checkpoint of ``step``."""
        tmp = self.tmp_dir(step)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, step: int) -> Path:
        """Rename the completed temporary directory into place, then move ``latest``."""
        tmp, final = self.tmp_dir(step), self.final_dir(step)
        old = None
        if final.exists():  # a step saved before (a resumed run passing it again): swap, then delete
            old = self.dir / f".old_{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _atomic_write_text(self.dir / LATEST, final.name + "\n")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.prune()
        return final

    def steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir())

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` points to, or None when the run has none."""
        pointer = self.dir / LATEST
        if not pointer.is_file():
            return None
        path = self.dir / pointer.read_text().strip()
        if not path.is_dir():
            raise CheckpointError(f"{pointer}: points to missing {path.name}; pass --resume with a checkpoint path")
        return path

    def prune(self) -> None:
        """Keep the newest ``keep_last`` checkpoints, milestones and whatever ``latest`` names."""
        steps = self.steps()
        keep = set(steps[-self.keep_last:])
        if self.keep_every:
            keep |= {s for s in steps if s % self.keep_every == 0}
        latest = self.latest()
        for s in steps:
            d = self.final_dir(s)
            if s not in keep and d != latest:
                shutil.rmtree(d, ignore_errors=True)
        for stale in [*self.dir.glob(".tmp_step_*"), *self.dir.glob(".old_step_*")]:
            shutil.rmtree(stale, ignore_errors=True)


def setup_writers(accelerator, run_dir: str | Path) -> bool:
    """Whether this process writes the run's checkpoints; every process must call it (collective).

    The main process writes them. A machine that does not see the main process's run
    directory (no shared filesystem) gets its own complete copy, written by its first
    process, so every machine can resume from its own disk; Accelerate's
    ``save_on_each_node`` is set to match. Found out once: the main process leaves a file
    of a fresh name in ``run_dir`` and each machine's first process looks for it.
    """
    from accelerate.utils import broadcast_object_list

    acc, run_dir = accelerator, Path(run_dir)
    if acc.num_processes == 1:
        return True
    name = broadcast_object_list([f".main-{uuid.uuid4().hex}" if acc.is_main_process else None])[0]
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / name).touch()
    acc.wait_for_everyone()
    shared = run_dir.is_dir() and name in os.listdir(run_dir)  # a fresh listing, not a cached lookup
    acc.wait_for_everyone()
    if acc.is_main_process:
        (run_dir / name).unlink()
    acc.project_configuration.save_on_each_node = not shared
    if not shared and acc.is_local_main_process:
        log.info("note: run directory %s: not the main process's (no shared filesystem); this machine keeps its own "
                 "copy of every checkpoint there", run_dir, extra={"all_ranks": True})
    return acc.is_main_process or (not shared and acc.is_local_main_process)


def resolve_resume(run_dir: str | Path, resume: str | None, option: str = "--resume") -> Path | None:
    """``None`` -> fresh start; ``auto`` -> latest in the run dir if any; else a run dir or step dir.

    Raises ``CheckpointError`` naming ``option`` and what is wrong with the path: it does not
    exist, it is a file, a run directory without a complete checkpoint, or a folder that is
    neither a run nor a complete step directory.
    """
    if resume is None:
        return None
    if resume == "auto":
        return CheckpointManager(run_dir).latest()
    path = Path(resume)
    hint = "give a checkpoints/step_XXXXXXXXX directory or a run directory" + (" or 'auto'" if option == "--resume" else "")
    if not path.exists():
        raise CheckpointError(f"{option} {resume}: no such file or folder; {hint}")
    if not path.is_dir():
        raise CheckpointError(f"{option} {resume}: a file, not a checkpoint directory; {hint}")
    if (path / "checkpoints").is_dir():
        found = CheckpointManager(path).latest()
        if found is None:
            raise CheckpointError(f"{option} {resume}: run directory has no complete checkpoint")
        return found
    if not (path / "trainer_state.pt").is_file():
        raise CheckpointError(f"{option} {resume}: not a complete checkpoint (no trainer_state.pt, and no "
                              f"checkpoints/ folder of a run); {hint}")
    return path


def read_torch_file(path: str | Path, trusted: bool = False):
    """A ``torch.save`` file of a checkpoint with every tensor on the CPU, whatever device wrote it.

    A run on a GPU tags its storages ``cuda:N``: read without a map they fail on a CPU-only
    machine and land on the writer's GPU elsewhere. Every checkpoint read goes through here (or
    ``read_safetensors``); callers move what they use to their own device. ``trusted``: unpickle
    any object (a trainer state this code wrote), else weights only. Raises what ``torch.load``
    raises for a missing, truncated or foreign file.
    """
    import torch

    return torch.load(path, map_location="cpu", weights_only=not trusted)


def read_safetensors(path: str | Path) -> dict:
    """A ``.safetensors`` file's tensors, on the CPU (as ``read_torch_file``)."""
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


def read_generator_file(path: str | Path) -> dict:
    """A ``generator.pt`` (``{"state_dict", "step", "ema"}``) read onto the CPU, tensors only (``weights_only``).

    Raises ``CheckpointError``, one line naming ``path``, for a file torch cannot read (truncated,
    corrupt, another program's) or one without a ``state_dict``; never torch's own advice.
    """
    import warnings

    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle's protocol: our line says it all
            warnings.simplefilter("ignore", UserWarning)
            blob = read_torch_file(path)
    except Exception:  # torch raises many types for truncated or foreign files, with advice not to pass on
        blob = None
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path}: not a readable generator checkpoint (truncated, corrupt or "
                              "not written by unshift); re-download it or save it again")
    return blob


WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DDP's wrappers, when saved wrapped


def strip_wrapper_prefixes(state: dict) -> dict:
    """Keys saved from a compiled or DDP-wrapped model (``_orig_mod.stem...``) -> the bare model's keys."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out
