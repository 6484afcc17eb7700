"""User-facing errors.

Every command turns a :class:`UserError` into a one-line message on stderr and exit code 2,
so library code raises it for bad input (a missing path, an unknown key) instead of printing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserError(Exception):
    """Bad input from the user: the message names the thing and says what to do."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (without a trailing full stop), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


@contextlib.contextmanager
def loading(what: str, hint: str = "") -> Iterator[None]:
    """Turn a loader's ``OSError``/``ValueError`` (missing files, a bad id, a broken config) into the
    one-line ``cannot load {what}: {first line}. {hint}``."""
    try:
        yield
    except (OSError, ValueError) as exc:
        tail = f". {hint}" if hint else ""
        raise UserError(f"cannot load {what}: {first_line(exc)}{tail}") from None
