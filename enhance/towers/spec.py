"""Tower specs: one string that names a vision-language tower wherever a command takes one.

Every command that takes a tower (``leaderboard --clip``, ``llava-train --vision-tower``, the demo,
``enhance``'s ``backbone.name_or_path``) accepts, besides what it took before (a local folder, an
HF id, ``genhancer-tiny:clip``):

* ``hf:ORG/NAME[/SUBFOLDER][@REVISION]``: a model folder inside a hub repository, fetched with
  ``huggingface_hub`` (so ``HF_HUB_OFFLINE=1`` with a pre-populated cache works, as on air-gapped
  clusters), e.g. ``hf:msj9817/GenHancer/OpenAICLIP/clip-vit-large-patch14``;
* ``WEIGHTS::BASE``: a ``.pth`` / ``.pt`` / ``.safetensors`` state dict of a known family (OpenAI's
  ``clip`` layout, open_clip's, timm's SigLIP) read onto the architecture and processor of ``BASE``
  (a folder, an HF id or an ``hf:`` spec); ``WEIGHTS`` is a local file or
  ``hf:ORG/NAME/PATH/FILE.pth[@REVISION]``, e.g.
  ``hf:BAAI/DIVA/OpenAICLIP/OpenAI-ViT-L-14-224.pth::openai/clip-vit-large-patch14``.

This module parses and checks specs on their text alone (no torch, no network), so bad input is
refused at once; :mod:`enhance.towers.resolve` turns a spec into a local HF folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from genhancer.runtime.errors import UserError

HUB_PREFIX = "hf:"
BASE_SEP = "::"
STATE_DICT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class HubRef:
    """A path inside a hub repository at a revision (``""``: the default branch)."""

    repo_id: str
    path: str = ""
    revision: str = ""

    @property
    def is_file(self) -> bool:
        return self.path.endswith(STATE_DICT_SUFFIXES)

    def __str__(self) -> str:
        tail = f"/{self.path}" if self.path else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo_id}{tail}{rev}"


@dataclass(frozen=True)
class TowerSpec:
    """A parsed spec: ``kind`` is ``hub`` (a hub folder), ``state_dict`` (weights + base) or
    ``plain`` (anything the commands already understood: folder, HF id, tiny name)."""

    text: str
    kind: str
    hub: HubRef | None = None
    weights: str = ""  # state_dict: a local file or an hf: file spec
    base: str = ""  # state_dict: the base tower spec


def parse_hub(text: str, option: str = "tower") -> HubRef:
    """``hf:ORG/NAME[/PATH][@REVISION]`` -> :class:`HubRef`; the error names ``option``."""
    body = text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text
    body, _, revision = body.partition("@")
    parts = [p for p in body.split("/")]
    expected = f"{HUB_PREFIX}ORG/NAME[/SUBFOLDER][@REVISION]"
    if len(parts) < 2 or any(not p for p in parts) or ("@" in text and not revision):
        raise UserError(f"{option}: '{text}' is not a hub spec; expected {expected}")
    for part in parts:
        if not _NAME.match(part) or part in (".", ".."):
            raise UserError(f"{option}: '{text}' has a bad path part '{part}'; expected {expected}")
    if revision and not re.match(r"^[A-Za-z0-9._/-]+$", revision):
        raise UserError(f"{option}: '{text}' has a bad revision '{revision}'")
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]), revision)


def parse_tower_spec(text: str, option: str = "tower") -> TowerSpec:
    """Parse ``text`` (see the module docstring); errors are one line naming ``option``."""
    text = text.strip()
    if not text:
        raise UserError(f"{option}: empty tower spec")
    if BASE_SEP in text:
        weights, _, base = text.rpartition(BASE_SEP)
        if not weights or not base:
            raise UserError(
                f"{option}: '{text}' must be WEIGHTS{BASE_SEP}BASE (a state dict and its base tower)"
            )
        if BASE_SEP in weights:
            raise UserError(f"{option}: '{text}' has more than one '{BASE_SEP}'")
        if not weights.endswith(STATE_DICT_SUFFIXES) and not weights.partition("@")[0].endswith(
            STATE_DICT_SUFFIXES
        ):
            raise UserError(
                f"{option}: '{weights}' is not a state dict file (expected one of "
                f"{', '.join(STATE_DICT_SUFFIXES)}) before '{BASE_SEP}{base}'"
            )
        if weights.startswith(HUB_PREFIX):
            parse_hub(weights, option)
        if base.startswith(HUB_PREFIX):
            parse_hub(base, option)
        return TowerSpec(text, "state_dict", weights=weights, base=base)
    if text.startswith(HUB_PREFIX):
        ref = parse_hub(text, option)
        if ref.is_file:
            raise UserError(
                f"{option}: '{text}' names a state dict; give the base it belongs to: "
                f"'{text}{BASE_SEP}BASE' (e.g. {BASE_SEP}openai/clip-vit-large-patch14)"
            )
        return TowerSpec(text, "hub", hub=ref)
    if text.endswith(STATE_DICT_SUFFIXES) and Path(text).expanduser().is_file():
        raise UserError(
            f"{option}: '{text}' is a state dict; give the base it belongs to: '{text}{BASE_SEP}BASE'"
        )
    return TowerSpec(text, "plain")


def is_tower_spec(text: str) -> bool:
    """Whether ``text`` needs :func:`enhance.towers.resolve.resolve_tower` (a hub or state-dict spec)."""
    return isinstance(text, str) and (text.startswith(HUB_PREFIX) or BASE_SEP in text)


def check_tower_spec(text: str, option: str = "tower") -> TowerSpec:
    """Everything that can be checked without torch or the network: the syntax, and that local
    weight files exist."""
    spec = parse_tower_spec(text, option)
    if spec.kind == "state_dict" and not spec.weights.startswith(HUB_PREFIX):
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise UserError(f"{option}: state dict not found: {spec.weights}")
    if spec.kind == "state_dict" and spec.base.startswith(("/", "./", "../", "~")):
        if not Path(spec.base).expanduser().is_dir():
            raise UserError(f"{option}: base tower folder not found: {spec.base}")
    return spec
