"""One-line reasons from exceptions: the command line prints every error as one line."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
