"""The conditions the sensitivity measurement trains stage 1 under, and their oracle one-hots."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genhancer.toyworld.sparse import RARE_ATTRIBUTES
from genhancer.toyworld.world import COLORS, ORIENTATIONS, POSITIONS, SHAPES, SIZES

#: Oracle one-hot attributes and their values (count's values come from the world's max_count).
ORACLE_VALUES: dict[str, tuple] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "count": (),
    "orientation": ORIENTATIONS,
    "position": POSITIONS,
}
ALL_ATTRIBUTES: tuple[str, ...] = tuple(ORACLE_VALUES)
#: Conditions the SD is scored under without training (its own text encoder).
SD_NATIVE: tuple[str, ...] = ("caption", "empty")


def oracle_attributes(condition: str) -> tuple[str, ...]:
    """The attributes a condition adds to the token (``token+rare`` -> count, orientation, position)."""
    if condition in ("token", "null", *SD_NATIVE):
        return ()
    if not condition.startswith("token+"):
        raise ValueError(f"unknown condition '{condition}'")
    names: list[str] = []
    for part in condition[len("token+") :].split(","):
        if part == "rare":
            names += RARE_ATTRIBUTES
        elif part == "all":
            names += ALL_ATTRIBUTES
        elif part in ORACLE_VALUES:
            names.append(part)
        else:
            raise ValueError(f"condition '{condition}': unknown attribute '{part}'")
    return tuple(dict.fromkeys(names))


def check_conditions(conditions: Sequence[str], denoiser: str) -> None:
    """Raise ``ValueError`` naming the first condition this denoiser cannot take."""
    for c in conditions:
        if c in SD_NATIVE and denoiser != "sd":
            raise ValueError(f"condition '{c}' is the SD's own text encoder; only denoiser 'sd' takes it")
        oracle_attributes(c)


def one_hots(scenes_attrs: Sequence[dict], attrs: Sequence[str], max_count: int) -> torch.Tensor:
    """[N, sum of value counts] one-hot block per attribute, in ``attrs`` order."""
    blocks = []
    for a in attrs:
        values = tuple(range(1, max_count + 1)) if a == "count" else ORACLE_VALUES[a]
        idx = torch.tensor([values.index(s[a]) for s in scenes_attrs])
        blocks.append(torch.nn.functional.one_hot(idx, len(values)).float())
    return torch.cat(blocks, dim=1) if blocks else torch.zeros(len(scenes_attrs), 0)
