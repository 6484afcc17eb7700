"""The llava-train command line: the pinned flag list, bad input, presets, describe."""

from __future__ import annotations

import json

import pytest

from llava_integration.cli import build_parser, main

FLAGS = {
    "--help",
    "--preset",
    "--config",
    "--set",
    "--output-dir",
    "--vision-tower",
    "--data-root",
    "--stage",
    "--projector",
    "--resume",
    "--describe",
    "--list-presets",
    "--threads",  # a property of the process (genhancer.runtime.threads), not of the run
    "--gpu-memory",  # --describe's card size for the memory plan, not a property of the run
}


def test_flag_list_is_pinned():
    """New knobs become config fields reached through --set, not new flags (the flag list is pinned)."""
    flags = {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")}
    assert flags == FLAGS


def test_list_presets(capsys):
    assert main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "llava15-7b", "llava15-7b-lora", "llava15-13b"):
        assert name in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give --preset"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "tiny", "--set", "pretrain.lr=fast"], "pretrain.lr"),
        (["--preset", "tiny", "--set", "finetune.trainable=all"], "finetune.trainable"),
        (["--preset", "tiny"], "--output-dir"),
        (
            ["--preset", "llava15-7b", "--output-dir", "/tmp/x", "--set", "model.vision_tower=/no/such/dir"],
            "vision tower",
        ),
        (
            ["swap", "--model", "/no/such", "--vision-tower", "x", "--output-dir", "/tmp/y"],
            "not a saved LLaVA",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    argv = [a.replace("/tmp/x", str(tmp_path / "x")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llava-train: error:") and message in err and "\n" not in err


def test_describe_counts_parameters_offline(capsys):
    assert main(["--preset", "llava15-7b-lora", "--describe"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["total"] == pytest.approx(7.06e9, rel=0.01)
    assert data["config"]["finetune"]["lora_r"] == 128
    assert "model.vision_tower" in data["docs"]
