"""User-facing errors.

Every command turns a :class:`UserError` into a one-line message on stderr and exit code 2,
so library code raises it for bad input (a missing path, an unknown key) instead of printing.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names the thing and says what to do."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (without a trailing full stop), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__
