"""Typed, strict configuration trees shared by every command.

A command's configuration is a tree of dataclasses. It is resolved in this order:
dataclass defaults, then a preset (a YAML overlay shipped as package data, which may name one
``base:`` preset), then a ``--config`` file, then ``--set a.b=value`` overrides. Unknown keys
and wrong types raise :class:`~genhancer.runtime.errors.UserError` naming the dotted key, so a typo fails
at start-up rather than hours into a run. Config files are parsed as data (YAML), never executed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from genhancer.runtime.errors import UserError

T = TypeVar("T")


def doc(default: Any, text: str) -> Any:
    """A dataclass field whose documentation travels with it (``--describe`` prints it)."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"doc": text})
    return dataclasses.field(default=default, metadata={"doc": text})


def override(base: type, name: str, default: Any) -> Any:
    """A subclass's own default for a field of dataclass ``base``, documented by ``base``'s text, so
    a section that only changes a default does not write its documentation again."""
    return doc(default, base.__dataclass_fields__[name].metadata["doc"])


def field_docs(tree: Any, prefix: str = "") -> dict[str, str]:
    """Dotted key -> documentation of every leaf field of a config tree (a class: its defaults;
    an instance: the sections it holds, so a tagged union documents the member chosen)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(tree):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if isinstance(tree, type):
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        else:
            value = getattr(tree, f.name)
        if dataclasses.is_dataclass(value):
            out.update(field_docs(value if not isinstance(tree, type) else type(value), key))
        else:
            out[key] = f.metadata.get("doc", "")
    return out


# --- tagged unions: a field that holds one of several sections, chosen by their ``name`` ---------

TAG = "name"


def tagged_members(tp: Any) -> dict[str, type] | None:
    """``{tag: section class}`` when ``tp`` is a union of dataclasses that each carry a one-value
    ``name: Literal["..."]`` field (a tagged union: the value's ``name`` picks the member); else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    members: dict[str, type] = {}
    for arg in typing.get_args(tp):
        if not dataclasses.is_dataclass(arg):
            return None
        tag_tp = typing.get_type_hints(arg).get(TAG)
        values = typing.get_args(tag_tp) if typing.get_origin(tag_tp) is typing.Literal else ()
        if len(values) != 1:
            return None
        members[values[0]] = arg
    return members


def _tagged_default(members: dict[str, type]) -> str:
    return next(iter(members))


def _pick_member(members: dict[str, type], value: Mapping, key: str) -> type:
    tag = value.get(TAG, _tagged_default(members))
    if tag not in members:
        raise UserError(f"config key '{key}.{TAG}': {tag!r} is not one of {list(members)}")
    return members[tag]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert where the conversion is lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    members = tagged_members(tp)
    if members is not None:
        if not isinstance(value, Mapping):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(_pick_member(members, value, key), value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue  # try the next member of the union
        raise UserError(f"config key '{key}': {value!r} is not a valid {tp}")
    if origin is typing.Literal:  # an enum: the value must be one of the listed ones, same type
        if not any(value == a and type(value) is type(a) for a in args):
            raise UserError(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}': expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"'{prefix}.{unknown[0]}'" if prefix else f"'{unknown[0]}'"
        raise UserError(f"unknown config key {where}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config tree (tuples become lists), suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: dict, overlay: Mapping) -> dict:
    """Return ``base`` updated by ``overlay``, recursing into nested mappings."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with an error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return data


def list_presets(presets_dir: Path) -> list[str]:
    return sorted(p.stem for p in presets_dir.glob("*.yaml"))


def load_preset(presets_dir: Path, name: str) -> dict:
    """A preset overlay, resolving at most one ``base:`` level."""
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(list_presets(presets_dir))}")
    data = load_yaml(path)
    base = data.pop("base", None)
    data.pop("description", None)
    if base is not None:
        base_data = (
            load_yaml(presets_dir / f"{base}.yaml") if (presets_dir / f"{base}.yaml").is_file() else None
        )
        if base_data is None:
            raise UserError(f"preset '{name}' names unknown base '{base}'")
        if "base" in base_data:
            raise UserError(f"preset '{base}' is used as a base and may not name a base itself")
        base_data.pop("description", None)
        data = deep_merge(base_data, data)
    return data


def preset_description(presets_dir: Path, name: str) -> str:
    data = load_yaml(presets_dir / f"{name}.yaml")
    return str(data.get("description", "")).strip()


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML so numbers and lists keep their type)."""
    if "=" not in item:
        raise UserError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set expects key=value, got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _field_type(cls: Any, path: list[str], data: Mapping | None = None) -> Any:
    """Annotation of the dotted ``path`` inside dataclass ``cls`` (None when unknown); a tagged
    union resolves to the member that ``data`` (the tree so far) names."""
    tp = cls
    for part in path:
        members = tagged_members(tp)
        if members is not None:
            tp = _pick_member(members, data if isinstance(data, Mapping) else {}, "")
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
        data = data.get(part) if isinstance(data, Mapping) else None
    return tp


def _takes_text(tp: Any) -> bool:
    """A ``str`` field, or an enum of strings (``Literal["no", "bf16"]``): its ``--set`` value is text."""
    if tp is str:
        return True
    args = typing.get_args(tp)
    return typing.get_origin(tp) is typing.Literal and all(isinstance(a, str) for a in args)


def apply_overrides(data: dict, overrides: Iterable[str], cls: Any = None) -> dict:
    """Merge ``--set`` items into ``data``. With ``cls``, a value for a text field is kept
    verbatim (YAML would read ``no`` as false and ``0755`` as an octal number)."""
    out = dict(data)
    for item in overrides:
        path, value = parse_override(item)
        if cls is not None and _takes_text(_field_type(cls, path, out)):
            value = item.split("=", 1)[1].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
        nested: dict = {}
        cursor = nested
        for part in path[:-1]:
            cursor[part] = {}
            cursor = cursor[part]
        cursor[path[-1]] = value
        out = deep_merge(out, nested)
    return out


def resolve(
    cls: type[T],
    presets_dir: Path,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> T:
    """defaults < preset < config file < overrides, validated as one tree."""
    data: dict = {}
    if preset:
        data = load_preset(presets_dir, preset)
    if config_file:
        file_data = load_yaml(config_file)
        base = file_data.pop("preset", None)
        if base and not preset:
            data = load_preset(presets_dir, base)
        data = deep_merge(data, file_data)
    data = apply_overrides(data, overrides, cls)
    cfg = from_dict(cls, data)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: Any, ignore: Iterable[str] = ()) -> str:
    """Stable short hash of the config tree, minus dotted keys in ``ignore``."""
    data = to_dict(cfg)
    for key in ignore:
        parts = key.split(".")
        cursor = data
        for part in parts[:-1]:
            cursor = cursor.get(part, {})
        if isinstance(cursor, dict):
            cursor.pop(parts[-1], None)
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        out: list[str] = []
        for k in keys:
            out += diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]


def check_choice(key: str, value: str, options: tuple[str, ...] | list[str]) -> None:
    """Raise a UserError naming ``key`` unless ``value`` is one of ``options``."""
    if value not in options:
        raise UserError(f"config key '{key}': '{value}' is not one of {list(options)}")
