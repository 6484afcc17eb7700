"""Method knowledge lives in the method's folder.

Outside ``enhance/methods/`` no code compares a value with a method's name (it asks the registry or
the method instead); a resolved config holds the chosen method's settings only. Published rows
that merely name a method are data (dictionaries keyed by name), which this check allows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from enhance.config import load_config
from enhance.methods import METHODS
from genhancer.runtime import configtools

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("genhancer", "enhance", "llava_integration", "eval", "demo", "bench")


def _branches_on_a_method_name(path: Path) -> list[str]:
    """``x == "dcr"``, ``"diva" != y``, ``m in ("dcr", ...)`` and ``match``-free equivalents."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = set()
        for op in operands:
            elts = op.elts if isinstance(op, ast.Tuple | ast.List | ast.Set) else [op]
            names |= {e.value for e in elts if isinstance(e, ast.Constant) and e.value in METHODS}
        if names:
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_check_sees_a_branch(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('def f(name):\n    return name == "dcr" or name in ("diva",) or name == "dcr-like"\n')
    assert len(_branches_on_a_method_name(probe)) == 2


def test_no_code_outside_the_method_folders_branches_on_a_method_name():
    found = [
        hit
        for pkg in PACKAGES
        for path in sorted((ROOT / pkg).rglob("*.py"))
        if "enhance/methods/" not in path.as_posix()
        for hit in _branches_on_a_method_name(path)
    ]
    assert not found, "\n".join(found)


FROZEN_SD_ONLY = {"sd", "augment", "temperature", "negatives", "prompt", "tokens", "draws"}
GENHANCER_ONLY = {"denoiser", "vae", "flow", "projector"}


def test_a_resolved_config_holds_the_chosen_method_keys_only():
    genhancer = configtools.to_dict(load_config("tiny"))
    assert set(genhancer["method"]) & FROZEN_SD_ONLY == set()
    assert GENHANCER_ONLY <= set(genhancer["method"])
    for name in ("dcr", "diva", "naive-contrastive"):
        tree = configtools.to_dict(load_config("tiny", method=name))
        assert tree["method"]["name"] == name and "sd" in tree["method"]
        assert set(tree["method"]) & GENHANCER_ONLY == set(), name
        assert set(tree) & (GENHANCER_ONLY | {"dcr", "diva", "naive"}) == set(), name
    dcr = configtools.to_dict(load_config("tiny", method="dcr"))
    assert "prompt" not in dcr["method"] and "contrastive_weight" not in dcr["method"]


def test_method_is_sugar_for_the_method_name_key():
    assert load_config("tiny", method="dcr") == load_config("tiny", overrides=["method.name=dcr"])


def test_an_old_config_tree_migrates(tmp_path):
    """A ``config.yaml`` in the shape runs wrote before the method sections (top-level ``sd`` /
    ``dcr`` / ``denoiser`` sections of every method at once) resolves to the same config."""
    new = load_config("tiny", method="dcr")
    old = configtools.to_dict(new)
    section = old.pop("method")
    old["method"] = {"name": "dcr"}
    old["sd"] = {k: v for k, v in section["sd"].items() if k not in ("scaling_factor", "shift_factor")}
    old["vae"] = {"name_or_path": "", "scaling_factor": section["sd"]["scaling_factor"], "shift_factor": 0.0}
    old["dcr"] = {**{k: section[k] for k in ("temperature", "negatives")}, **section["augment"]}
    old["denoiser"] = {"kind": "sd", "num_layers": 2}  # another method's section: dropped
    old["diva"] = {"prompt": "a photo of a ."}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_config(config_file=str(path)) == new
