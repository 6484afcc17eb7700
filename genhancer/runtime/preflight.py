"""Checks a command runs on its resolved config before it imports a model library.

Importing torch, transformers and diffusers takes seconds (minutes on a loaded machine), and a
wrong path found only when its loader runs costs all of it. These checks need nothing but the
file system, so bad input is refused at once with the same one-line message. The loaders keep
their own checks: these only move the common mistakes to the front.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from genhancer.runtime.errors import UserError


def looks_local(value: str) -> bool:
    """A value written as a path on this machine (absolute, ``./``, ``../``, ``~``) rather than a
    hub id (``org/name``) or a ``genhancer-tiny:*`` name."""
    return value.startswith(("/", "./", "../", "~")) or value in (".", "..")


def lookup(cfg: Any, dotted: str) -> Any:
    """``cfg.a.b`` for ``"a.b"`` (dataclass trees)."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def require_local_paths(cfg: Any, keys: Iterable[str], what: dict[str, str] | None = None) -> None:
    """Each config key in ``keys`` whose value is written as a local path must exist; the error
    names the key, the path and (``what``) what the path is for."""
    what = what or {}
    for key in keys:
        value = lookup(cfg, key)
        if not isinstance(value, str) or not looks_local(value) or any(c in value for c in "*?[{"):
            continue  # a hub id, a tiny name, or a shard pattern (its loader expands it)
        if not Path(value).expanduser().exists():
            label = f" ({what[key]})" if key in what else ""
            raise UserError(f"{key}{label}: {value} does not exist")


def check_run_folder(output_dir: str | Path, resume: bool) -> None:
    """The run-folder refusals of :func:`genhancer.runtime.driver.check_run_dir`, on names alone:
    a folder that holds a run needs ``--resume``; ``--resume`` needs a run."""
    run_dir = Path(output_dir)
    if not resume and (run_dir / "config.yaml").exists():  # written before any checkpoint
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-dir"
        )
    if resume and not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").is_dir():
        raise UserError(f"--resume: {run_dir} holds no run to resume (no config.yaml, no checkpoints)")
