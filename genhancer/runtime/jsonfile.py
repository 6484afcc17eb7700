"""Reading a JSON file a user handed over (a board's results, an export's metadata): a file that is
not JSON, or holds the wrong kind of value, is a one-line :class:`UserError` naming it, not a
traceback from deep inside the reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genhancer.runtime.errors import UserError


def read_json(path: Path, kind: type = dict, what: str = "a JSON object", label: str = "") -> Any:
    """The value in ``path``, which must be a ``kind`` (``what`` names it in the error); ``label``
    leads the message (the flag that named the file, e.g. ``--results``)."""
    where = f"{label} {path}" if label else str(path)
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(data, kind):
        raise UserError(f"{where} must hold {what}")
    return data
