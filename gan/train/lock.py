"""One training per run directory: an OS lock on ``<run_dir>/.lock``, held by the launch's main process.

    lock = lock_run_dir(accelerator, run_dir)   # every rank calls it; RunDirError (exit 2) on every rank
    ...
    if lock is not None:
        lock.release()                          # or the process ends: the kernel drops it

A run directory holds one history: a second start into it, fresh or ``--resume``, is refused
with one line naming the process that holds it (pid, host, since when). The lock is
``fcntl.flock``, which the kernel releases when its process ends however it ends (``kill -9``
included), so a crashed run never blocks the next start; the pid and host written into the
file are only for the message. A filesystem without locks (some network or FUSE mounts) runs
unlocked, with a one-line note.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from gan.errors import UnshiftError, first_line
from gan.log import get_logger

log = get_logger(__name__)

LOCK_NAME = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # the filesystem has no flock


class RunDirError(UnshiftError):
    """The run directory is held by another training, or cannot be created; the message names it (exit 2)."""


class RunDirLock:
    """The lock of one run directory, held while this object's file descriptor is open."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunDirLock | None:
        """Take the lock of ``run_dir`` (created if missing) and write this process's pid and host into it.

        Returns None where the filesystem has no locks (with a one-line note). Raises ``RunDirError`` naming
        the holder when another process has it, or when ``run_dir`` cannot be created or written.
        """
        run_dir = Path(run_dir)
        path = run_dir / LOCK_NAME
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            why = e.strerror or first_line(e)
            raise RunDirError(f"run directory {run_dir}: cannot be created or written ({why}); pick another "
                              "--run-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(f"run directory {run_dir} is in use by another training ({holder}); wait for it to "
                              "end or stop it, or pick another --run-dir") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_LOCKS:
                raise
            log.warning("note: run directory %s: its filesystem has no locks (%s); make sure no other training "
                        "uses it at the same time", run_dir, e.strerror)
            return None
        try:  # for the message of a refused start; the lock holds without it (e.g. on a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except OSError:
            pass
        return cls(fd, path)

    def release(self) -> None:
        """Let the next training start here (closing the descriptor drops the lock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    return text or "pid and host not written yet"


def lock_run_dir(accelerator, run_dir: str | Path) -> RunDirLock | None:
    """The launch's lock of ``run_dir``: one per launch, not per rank; every rank must call it (collective).

    The main process (local rank 0 of machine 0) takes it before any rank writes there and
    tells every other rank the outcome in one broadcast, so a refusal ends every rank with the
    same ``RunDirError`` (printed once) instead of leaving them waiting at the next collective.
    """
    lock, refusal = None, None
    if accelerator.is_main_process:
        try:
            lock = RunDirLock.acquire(run_dir)
        except RunDirError as e:
            refusal = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise RunDirError(refusal)
    return lock
