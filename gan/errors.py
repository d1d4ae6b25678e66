"""One error hierarchy for what a user can cause, and the one path launchers report it by.

Every error a user can cause (a bad config, missing or corrupt audio, a stale cache, a
mismatched checkpoint, a run that diverged) derives from ``UnshiftError``; its message is
one line that names the thing and says what to do. Launchers run through ``run_cli``,
which prints that line once (on the first process under ``accelerate launch``) and
returns the documented exit code:

    0  done
    1  the work ran but did not finish well (a run stopped on non-finite losses, some files failed)
    2  a user error: nothing was done (bad arguments, config, data or checkpoint)
"""
from __future__ import annotations

from typing import Callable


class UnshiftError(Exception):
    """Base of every user-facing error; ``exit_code`` is what the launchers return for it."""

    exit_code = 2


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def report(e: UnshiftError) -> int:
    """Say ``error: <first line>`` on stderr (first process only, ``gan.log``) and return the error's exit code."""
    from gan.log import get_logger

    get_logger(__name__).error("error: %s", first_line(e))  # first process only
    return e.exit_code


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a launcher's ``main``; a ``UnshiftError`` escaping it is reported as one line with its exit code."""
    try:
        return main(argv)
    except UnshiftError as e:
        return report(e)
