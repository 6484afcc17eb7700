"""Towers from anywhere: one spec for local folders, hub subfolders and released state dicts.

:mod:`.spec` parses and checks a spec without torch, :mod:`.resolve` turns it into a local
transformers folder (:mod:`.hub` through ``huggingface_hub``, :mod:`.convert` for state dicts of
the layouts in :mod:`.families`), and :mod:`.cli` is ``genhancer-convert``.
"""

from enhance.towers.spec import BASE_SEP, HUB_PREFIX, check_tower_spec, is_tower_spec, parse_tower_spec

__all__ = ["BASE_SEP", "HUB_PREFIX", "check_tower_spec", "is_tower_spec", "parse_tower_spec"]
