"""Messages of the library: one ``logging`` logger per module under ``unshift``, shown on the first process.

    from gan.log import get_logger
    log = get_logger(__name__)
    log.info("resumed from %s at step %d", path, step)      # global rank 0 only
    log.warning("note: %s: silent; skipped", name)

Messages go to standard error, one line each, as written (standard output is left to results: tables, JSON). The stream is looked up
when a message is written, so redirected or captured streams receive it. Under ``accelerate launch`` or torchrun
only global rank 0 writes (its ``RANK`` is 0), so a message is printed once however many processes there are; pass
``extra={"all_ranks": True}`` for a message every process must print. Set ``UNSHIFT_LOG_LEVEL=WARNING`` to
keep only warnings, or attach your own handlers to ``logging.getLogger("unshift")``.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager

ROOT = "unshift"


class _FirstProcess(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return os.environ.get("RANK", "0") == "0" or getattr(record, "all_ranks", False)


class _ConsoleHandler(logging.Handler):
    """Each message as one line on the current ``sys.stderr`` (through ``tqdm.write``, so a progress bar
    on the same stream is redrawn below it instead of being broken)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging must never raise into the caller
            self.handleError(record)


def _configure() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _ConsoleHandler) for h in root.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_FirstProcess())
        root.addHandler(handler)
        root.setLevel(os.environ.get("UNSHIFT_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return root


@contextmanager
def drop_stderr_lines(pattern: re.Pattern):
    """Drop the lines matching ``pattern`` from what this process writes to standard error meanwhile.

    Works on file descriptor 2, so it also catches what C++ code (torch's ``TORCH_WARN``) prints
    past Python's ``warnings`` filters; the other lines are written out, in order, at the end.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [ln for ln in held.read().splitlines(keepends=True)
                    if not pattern.search(ln.decode(errors="replace"))]
            if kept:
                os.write(2, b"".join(kept))


def get_logger(module: str) -> logging.Logger:
    """The logger of ``module`` (``gan.train.trainer`` -> ``unshift.train.trainer``)."""
    _configure()
    return logging.getLogger(f"{ROOT}.{module.removeprefix('gan.')}")
