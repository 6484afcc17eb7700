"""The whole chain through each command's ``main([...])``: ``enhance`` -> ``llava-train`` ->
``leaderboard``, each reading what the previous one wrote (the run-folder contracts), on the suite's
config-built tiny models. Golden losses (``test_golden_losses.py``) pin the numbers; this pins the
hand-offs."""

from __future__ import annotations

import json

import torch
from testkit import load_test_module, set_flags, tiny_enhance_flags, tiny_llava_sets


def test_enhance_then_llava_train_then_leaderboard(tmp_path, tmp_model_dirs):
    from enhance.cli import main as enhance
    from eval.cli import main as leaderboard
    from llava_integration.cli import main as llava_train

    run = tmp_path / "enhance"
    flags = tiny_enhance_flags(tmp_model_dirs, "stage1.steps=2", "stage2.steps=2", "logging.progress=false")
    assert enhance([*flags, "--output-dir", str(run)]) == 0
    tower = run / "export" / "vision_tower"
    assert (tower / "config.json").is_file() and (run / "export" / "hf" / "config.json").is_file()

    parts = load_test_module("llava_integration/conftest.py", "_genhancer_tests_llava_conftest")
    llm = parts.make_llm(tmp_path / "llm")
    llava = tmp_path / "llava"
    sets = tiny_llava_sets(llm, samples=4)
    argv = ["--preset", "tiny", "--vision-tower", str(tower), "--output-dir", str(llava)]
    assert llava_train([*argv, *set_flags(sets)]) == 0
    final = llava / "final"
    # The enhanced tower is the one inside DIR/final: its weights came from the enhance export.
    from safetensors.torch import load_file

    exported = load_file(tower / "model.safetensors")
    inside = load_file(final / "model.safetensors")
    for key, value in exported.items():  # LLaVA stores CLIPVisionModel's vision_model.* as vision_tower.*
        twin = "vision_tower." + key.removeprefix("vision_model.")
        assert twin in inside and torch.equal(inside[twin].to(value.dtype), value), key

    board = tmp_path / "board"
    small = {
        "progress": "false",
        "fixtures.image_size": "32",
        "fixtures.pairs_per_pattern": "2",
        "fixtures.class_images": "3",
        "fixtures.retrieval_images": "6",
        "lmms.max_new_tokens": "4",
        "lmms.fixtures.mmvp_pairs": "3",
        "lmms.fixtures.pope_per_split": "4",
    }
    argv = [
        "--preset",
        "tiny",
        "--clip",
        f"enhanced={run / 'export' / 'hf'}",
        "--mllm",
        f"enhanced={final}",
        "--benchmarks",
        "mmvp_vlm,zeroshot,mmvp,pope",
        "--output-dir",
        str(board),
        *[x for k, v in small.items() for x in ("--set", f"{k}={v}")],
    ]
    assert leaderboard(argv) == 0
    records = json.loads((board / "results.json").read_text())
    scored = {r["benchmark"] for r in records if r["model"] == "enhanced"}
    assert {"mmvp_vlm", "zeroshot", "mmvp", "pope"} <= scored
    assert all(0.0 <= r["value"] <= 100.0 for r in records if r["metric"] in ("average", "accuracy"))
    assert "enhanced" in (board / "leaderboard.md").read_text()
