"""Checks a command runs on its resolved config before it imports a model library.

Importing torch, transformers and diffusers takes seconds (minutes on a loaded machine), and a
wrong path found only when its loader runs costs all of it. These checks need nothing but the
file system, so bad input is refused at once with the same one-line message. The loaders keep
their own checks: these only move the common mistakes to the front.
"""

from __future__ import annotations

import json
import os
import tarfile
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
        if isinstance(value, str) and "::" in value:  # a state dict on a base tower (WEIGHTS::BASE):
            value = value.split("::", 1)[0]  # its weights file is the local path to check
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


# ------------------------------------------------------------------------------- data paths
# The data checks below read at most a few headers or the first kilobytes of a file, so a folder
# of millions of images or a 1 GB JSON file costs milliseconds. The loaders still check every item.

#: Image suffixes an image folder is searched for (``enhance.data.sources`` reads the same ones).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Tar members a webdataset sample's image can be stored as.
SHARD_IMAGE_SUFFIXES: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


def _readable(path: Path, label: str) -> None:
    """Open ``path`` (file: read a byte; folder: list it) or refuse naming it."""
    try:
        if path.is_dir():
            next(os.scandir(path), None)
        else:
            with open(path, "rb") as f:
                f.read(1)
    except OSError as exc:
        raise UserError(f"{label}: {path} is not readable ({exc.strerror or exc})") from None


def _first_image(root: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The first image file met walking ``root`` (hidden entries skipped); stops at the first hit."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                return Path(dirpath) / name
    return None


def check_image_folder(
    path: str, label: str = "data.path", suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> None:
    """A folder that exists, can be listed and holds at least one readable image file."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"{label}: {path} does not exist")
    if not root.is_dir():
        raise UserError(f"{label}: {path} is not a directory (an image folder is expected)")
    _readable(root, label)
    first = _first_image(root, suffixes)
    if first is None:
        raise UserError(
            f"{label}: image folder {path} contains no images ({', '.join(suffixes)}, searched recursively)"
        )
    _readable(first, label)


def _shard_has_image(shard: Path, headers: int = 64) -> bool:
    """Whether one of the first ``headers`` members of a tar shard is a sample's image."""
    with tarfile.open(shard, "r:") as tar:
        for _ in range(headers):
            member = tar.next()
            if member is None:
                return False
            if member.isfile() and member.name.rsplit(".", 1)[-1].lower() in SHARD_IMAGE_SUFFIXES:
                return True
    return True  # only headers seen so far lack an image: leave the rest to the loader


def check_shards(path: str, label: str = "data.path") -> None:
    """Tar shards in the img2dataset layout: a folder holding ``.tar`` files, or one ``.tar`` file,
    whose first shard opens as a tar and stores images. Patterns (``{..}``, globs, ``::``) and URLs
    are left to the loader, which expands them."""
    if any(c in path for c in "*?[{") or "::" in path or "://" in path or path.startswith("pipe:"):
        return
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"{label}: {path} does not exist")
    if root.is_dir():
        _readable(root, label)
        first = next(iter(sorted(root.rglob("*.tar"))), None)
        if first is None:
            raise UserError(f"{label}: webdataset folder {path} holds no .tar shards")
    else:
        first = root
    _readable(first, label)
    try:
        has_image = _shard_has_image(first)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{label}: {first} is not a tar shard ({exc})") from None
    if not has_image:
        raise UserError(
            f"{label}: shard {first} stores no image member (.{', .'.join(SHARD_IMAGE_SUFFIXES)}); "
            "expected the img2dataset webdataset layout"
        )


def check_hf_dataset(path: str, image_column: str, label: str = "data.path") -> None:
    """A local ``Dataset.save_to_disk`` folder whose recorded features name ``image_column``
    (read from its ``dataset_info.json``); hub ids and other layouts are left to ``datasets``."""
    root = Path(path).expanduser()
    if not looks_local(path) or not root.is_dir():
        return
    infos = [root / "dataset_info.json"] + sorted(root.glob("*/dataset_info.json"))
    for info in infos:
        if not info.is_file():
            continue
        _readable(info, label)
        try:
            features = json.loads(info.read_text()).get("features") or {}
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{label}: {info} is not valid JSON") from None
        if features and image_column not in features:
            raise UserError(
                f"{label}: HF dataset {path} has no column {image_column!r} "
                f"(columns: {', '.join(features)}); set data.image_column"
            )
        return


def check_llava_json(path: Path, label: str, head_bytes: int = 1 << 20) -> None:
    """A LLaVA JSON file: a readable JSON list whose first row is an object with a
    ``conversations`` list (checked on the first ``head_bytes`` only; the loader checks every row)."""
    if not path.exists():
        raise UserError(f"{label}: {path} does not exist")
    if path.is_dir():
        raise UserError(f"{label}: {path} is a directory, not a LLaVA JSON file")
    _readable(path, label)
    with open(path, "rb") as f:
        head = f.read(head_bytes).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not head.startswith("["):
        raise UserError(f"{label}: {path} is not a JSON list of samples (LLaVA's schema)")
    body = head[1:].lstrip()
    if body.startswith("]"):
        raise UserError(f"{label}: {path} holds no samples")
    try:
        first, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError:
        if len(head) < head_bytes:  # the whole file was read: it is broken, not just long
            raise UserError(f"{label}: {path} is not valid JSON") from None
        return  # a first row longer than the head: the loader will see it
    if not isinstance(first, dict) or not isinstance(first.get("conversations"), list):
        raise UserError(
            f"{label}: {path}: the first sample has no 'conversations' list (LLaVA's schema: "
            '[{"id", "image", "conversations": [{"from", "value"}, ...]}, ...])'
        )


def check_folder(path: Path, label: str) -> None:
    """A folder that exists and can be listed."""
    if not path.exists():
        raise UserError(f"{label}: {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{label}: {path} is not a directory")
    _readable(path, label)


def check_data(source: str, path: str, image_column: str = "image", label: str = "data.path") -> None:
    """``enhance``'s training images by source kind (``toyworld`` reads no path)."""
    if source == "toyworld":
        return
    if not path:
        raise UserError(f"{label} is empty: point it at your {source} data (--set {label}=...)")
    if source == "imagefolder":
        check_image_folder(path, label)
    elif source == "webdataset":
        check_shards(path, label)
    elif source == "hf":
        check_hf_dataset(path, image_column, label)
