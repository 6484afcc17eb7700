"""User-facing errors.

Every command turns a :class:`UserError` into a one-line message on stderr and exit code 2,
so library code raises it for bad input (a missing path, an unknown key) instead of printing.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names the thing and says what to do."""

    exit_code = 2
