"""The methods on one bench, one registry line each.

A method is a folder (``enhance/methods/<name>/``: ``config.py``, ``method.py``, ``model.py``,
``recipes.yaml``); see :mod:`enhance.methods.base` for what it provides. ``method.name`` in the
config picks one; :data:`METHOD_SECTION` is the tagged union of their config sections.
"""

from __future__ import annotations

from typing import Union

from enhance.methods.base import Method, MethodModel
from enhance.methods.dcr.method import DCR
from enhance.methods.diva.method import DIVA
from enhance.methods.genhancer.method import GenHancer
from enhance.methods.naive_contrastive.method import NaiveContrastive
from genhancer.runtime.errors import UserError

# The registry: the first is the default method.
METHODS: dict[str, Method] = {m.name: m for m in (GenHancer(), DIVA(), DCR(), NaiveContrastive())}

#: ``EnhanceConfig.method``: one of the methods' sections, chosen by its ``name``.
METHOD_SECTION = Union[tuple(m.section for m in METHODS.values())]  # noqa: UP007 - built from the registry


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"--method {name}: unknown method; choose one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "METHOD_SECTION", "Method", "MethodModel", "get_method"]
