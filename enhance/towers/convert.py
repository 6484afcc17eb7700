"""Convert a released state dict onto its base model and write a transformers folder once.

The weights are read safely (safetensors, or ``torch.load(weights_only=True)`` memory-mapped),
their layout recognised (:mod:`enhance.towers.families`), renamed to transformers' names and
checked key by key and shape by shape against the base's architecture, built on the meta device
from its config alone: a state dict of another base (a ViT-B/16 ``.pth`` given with a ViT-L base)
is refused with one line naming the first key that does not fit, before the base's weights load.
The result is the base's model class and processor with the released weights, plus
``genhancer_conversion.json`` saying where they came from.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from enhance.towers.families import IGNORED, Family, Mapped, detect_family
from genhancer.runtime.errors import UserError, first_line

CONVERSION_FILE = "genhancer_conversion.json"
CONVERTER_VERSION = 1


@dataclass
class Conversion:
    """What a conversion read and wrote (also saved as ``genhancer_conversion.json``)."""

    source: str
    base: str
    family: str
    prefix: str
    converted: int
    from_base: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    hidden_act: str | None = None

    def to_json(self) -> dict:
        return {
            "converter_version": CONVERTER_VERSION,
            "source": self.source,
            "base": self.base,
            "family": self.family,
            "prefix": self.prefix,
            "converted_tensors": self.converted,
            "from_base": len(self.from_base),
            "ignored_keys": self.ignored,
            "hidden_act": self.hidden_act,
        }


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file, safely; a checkpoint
    that wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:
            raise UserError(f"cannot read {path}: {first_line(exc)}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "zip" in str(exc) or "TorchScript" in str(exc) or "archive" in str(exc):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as inner:
                raise UserError(f"cannot read {path} as a state dict: {first_line(inner)}") from None
        else:
            raise UserError(f"cannot read {path} as a state dict: {first_line(exc)}") from None
    except Exception as exc:  # weights_only refuses pickled code: say so in one line
        raise UserError(
            f"cannot read {path} as a state dict (weights_only=True): {first_line(exc)}"
        ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no state dict (a mapping of names to tensors)")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keys under ``prefix`` (prefix removed) and the keys outside it, which are left out."""
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    outside = sorted(k for k in state if not k.startswith(prefix))
    inside = {k: v for k, v in inside.items() if k not in IGNORED}
    return inside, outside


def _model_class(model_type: str):
    from transformers import CLIPModel, SiglipModel

    return SiglipModel if model_type == "siglip" else CLIPModel


def base_config(base: str):
    """The base's transformers config (no weights)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise UserError(f"--base {base}: cannot read its config: {first_line(exc)}") from None


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every parameter and persistent buffer of the base architecture, built on the meta device."""
    with torch.device("meta"):
        model = _model_class(config.model_type)(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_fits(mapped: Mapped, shapes: dict[str, tuple[int, ...]], family: Family, base: str) -> list[str]:
    """Refuse the first source key with no place, or the wrong shape, in the base; return the base
    keys the state dict does not provide (allowed only outside the image side of a vision-only
    layout)."""
    for hf_key, (src_key, tensor) in mapped.items():
        if hf_key not in shapes:
            raise UserError(f"state dict key '{src_key}' has no place in base {base} (as '{hf_key}')")
        want = shapes[hf_key]
        got = tuple(tensor.shape)
        if got != want and not (tensor.numel() == 1 and torch.Size(want).numel() == 1):
            raise UserError(
                f"state dict key '{src_key}' has shape {list(got)} where base {base} has {list(want)} "
                f"('{hf_key}'): the weights belong to another architecture"
            )
    missing = [k for k in shapes if k not in mapped and not k.endswith("position_ids")]
    image_side = [k for k in missing if k.startswith(("vision_model.", "visual_projection"))]
    if missing and (not family.vision_only or image_side):
        first = (image_side or missing)[0]
        raise UserError(
            f"the state dict ({family.name} layout) provides no '{first}' that base {base} needs "
            f"({len(missing)} keys missing): the weights belong to another architecture"
        )
    return missing


def plan(source: str | Path, base: str, source_label: str = "") -> tuple[Family, Mapped, Conversion, object]:
    """Read, recognise, rename and check; nothing of the base's weights is loaded yet."""
    state = read_state_dict(source)
    family, prefix = detect_family(list(state))
    inner, outside = _strip(state, prefix)
    config = base_config(base)
    if config.model_type != family.model_type:
        raise UserError(
            f"the state dict is in the {family.description} layout ({family.model_type}) but base {base} "
            f"is a '{config.model_type}' model; give a {family.model_type} base"
        )
    mapped = family.mapper(inner)
    missing = check_fits(mapped, expected_shapes(config), family, base)
    info = Conversion(
        source=source_label or str(source),
        base=base,
        family=family.name,
        prefix=prefix,
        converted=len(mapped),
        from_base=missing,
        ignored=outside[:20] + ([f"... {len(outside) - 20} more"] if len(outside) > 20 else []),
    )
    return family, mapped, info, config


def _with_activation(config, act: str | None):
    """The config with ``act`` on both towers (the activation the source library computes with)."""
    if act is None:
        return config, None
    changed = None
    for sub in (config.vision_config, config.text_config):
        if getattr(sub, "hidden_act", act) != act:
            changed = act
            sub.hidden_act = act
    return config, changed


def convert(source: str | Path, base: str, out_dir: str | Path, source_label: str = "") -> Conversion:
    """Write ``out_dir``: the base's model class and processor holding the weights of ``source``.

    Written to a temporary folder beside ``out_dir`` and moved into place, so an interrupted
    conversion never leaves a folder that looks complete."""
    from transformers import AutoProcessor

    family, mapped, info, config = plan(source, base, source_label)
    config, info.hidden_act = _with_activation(config, family.hidden_act)
    cls = _model_class(config.model_type)
    if info.from_base:  # the image side only: the rest is the base's
        model = cls.from_pretrained(base, config=config)
    else:
        with torch.device("meta"):
            model = cls(config)
    state = {k: t for k, (_, t) in mapped.items()}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = {k: v.reshape(shapes[k]) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=not info.from_base)
    out = Path(out_dir)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        try:
            AutoProcessor.from_pretrained(base).save_pretrained(tmp)
        except (OSError, ValueError) as exc:
            raise UserError(f"--base {base}: cannot read its processor: {first_line(exc)}") from None
        (tmp / CONVERSION_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info
