"""Helpers for the one-line error messages users see."""
from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__
