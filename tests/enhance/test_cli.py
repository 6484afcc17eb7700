"""``enhance`` command line, called in-process through ``main([...])`` (the command contracts:
--help, --preset/--config/--set, exit code 2 with a one-line message, --describe, --list-presets)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from enhance.cli import build_parser, main
from enhance.config import PRESETS_DIR, load_config
from genhancer.runtime import configtools

EXPECTED_FLAGS = {
    "-h",
    "--help",
    "--preset",
    "--config",
    "--set",
    "--output-dir",
    "--stage",
    "--resume",
    "--build-latent-cache",  # an action (like --describe), not a knob: its settings are latent_cache.*
    "--method",  # picks the recipe overlay (presets/methods/<method>.yaml) the --preset resolves through
    "--describe",
    "--list-presets",
    "--threads",  # a property of the process (genhancer.runtime.threads), not of the run
    "--gpu-memory",  # --describe's card size for the memory plan, not a property of the run
}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("enhance: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_flag_list_is_pinned():
    """A new knob is a config field reached through --set, never a new flag (the flag list is pinned)."""
    flags = {s for action in build_parser()._actions for s in action.option_strings}
    assert flags == EXPECTED_FLAGS


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in EXPECTED_FLAGS - {"-h"}:
        assert flag in out
    assert "--preset tiny" in out  # the tiny/CPU command is documented


def test_list_presets(capsys):
    code, out, err = _run(capsys, "--list-presets")
    assert code == 0 and err == ""
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert names == configtools.list_presets(PRESETS_DIR)
    assert "tiny" in names
    tiny_line = next(line for line in out.splitlines() if line.split()[0] == "tiny")
    assert configtools.preset_description(PRESETS_DIR, "tiny") in tiny_line


def test_list_presets_does_not_import_torch():
    """Heavy libraries load lazily, so --help and --list-presets return at once."""
    code = (
        "import sys; from enhance.cli import main; rc = main(['--list-presets']); "
        "sys.stdout.flush(); print('HEAVY', sorted(m for m in ('torch', 'transformers', 'diffusers') "
        "if m in sys.modules)); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_unknown_preset(capsys, tmp_path):
    code, out, err = _run(capsys, "--preset", "nope", "--output-dir", str(tmp_path / "run"))
    assert code == 2 and out == ""
    _assert_one_line_error(err, "'nope'", "tiny")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--preset", "tiny", "--set", "nope.key=1", "--describe"], ["'nope'", "unknown config key"]),
        (["--preset", "tiny", "--set", "stage1.nope=1", "--describe"], ["'stage1.nope'"]),
        (["--preset", "tiny", "--set", "stage1.lr=abc", "--describe"], ["'stage1.lr'"]),
        (["--preset", "tiny", "--set", "stage1.lr", "--describe"], ["key=value"]),
        (
            ["--preset", "tiny", "--set", "method.denoiser.axes_dims_rope=[4, 4, 4]", "--describe"],
            ["axes_dims_rope"],
        ),
        (["--describe"], ["--preset", "--config"]),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, needles):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    _assert_one_line_error(err, *needles)


def test_missing_output_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "--preset", "tiny")
    assert code == 2
    _assert_one_line_error(err, "--output-dir")
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing built


def test_missing_config_file(capsys, tmp_path):
    code, _, err = _run(capsys, "--config", str(tmp_path / "missing.yaml"), "--describe")
    assert code == 2
    _assert_one_line_error(err, "missing.yaml")


def test_malformed_config_file_is_a_one_line_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1:\n  lr: 1\n lr2: 3\n")
    code, _, err = _run(capsys, "--config", str(bad), "--describe")
    assert code == 2
    _assert_one_line_error(err, "bad.yaml")


def test_argparse_errors_also_exit_2(capsys):
    for argv in (["--stage", "3", "--preset", "tiny"], ["--no-such-flag"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_describe_prints_config_counts_and_docs(capsys):
    code, out, err = _run(capsys, "--preset", "tiny", "--set", "stage1.steps=7", "--describe")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert set(data) >= {"config", "parameters", "docs"}
    expected_cfg = configtools.to_dict(load_config("tiny", overrides=["stage1.steps=7"]))
    assert data["config"] == expected_cfg
    assert isinstance(data["parameters"]["denoiser"], int) and data["parameters"]["denoiser"] > 0
    # tiny CLIP widths are known (64, 64): pooled head 64 -> 64, context head 64 -> 64, no local head
    per_head = 2 * 64 + (64 * 64 + 64) + (64 * 64 + 64)
    assert data["parameters"]["projector"] == 2 * per_head
    assert data["docs"]["stage2.lora_r"] == "LoRA rank"


def test_describe_paper_preset(capsys):
    code, out, _ = _run(capsys, "--preset", "openai-clip-l14-224", "--describe")
    assert code == 0
    params = json.loads(out)["parameters"]
    assert 1.30e9 < params["denoiser"] < 1.32e9  # paper Table 7
    # 768-d global token -> pooled 768 and context 4096 (FLUX's pooled and context widths)
    pooled = 2 * 768 + 768 * 768 + 768 + 768 * 768 + 768
    context = 2 * 768 + 768 * 4096 + 4096 + 4096 * 4096 + 4096
    assert params["projector"] == pooled + context


def test_describe_discrete_preset_counts_its_parts(capsys):
    code, out, _ = _run(capsys, "--preset", "siglip-so400m-224-discrete", "--describe")
    assert code == 0
    params = json.loads(out)["parameters"]
    # SigLIP 1152-d global token -> one context head of width perceiver_hidden 1024, no pooled head
    assert params["projector"] == 2 * 1152 + 1152 * 1024 + 1024 + 1024 * 1024 + 1024
    assert isinstance(params["denoiser"], int) and params["denoiser"] > 0


def test_describe_stage_flag_and_config_file(capsys, tmp_path):
    cfg_file = tmp_path / "my.yaml"
    cfg_file.write_text("preset: tiny\nstage2:\n  lora_r: 4\n")
    code, out, _ = _run(capsys, "--config", str(cfg_file), "--stage", "1", "--describe")
    assert code == 0
    cfg = json.loads(out)["config"]
    assert cfg["train"]["stages"] == [1] and cfg["stage2"]["lora_r"] == 4
    assert cfg["backbone"]["name_or_path"] == "genhancer-tiny:clip"
    code, out, _ = _run(capsys, "--preset", "tiny", "--stage", "all", "--describe")
    assert json.loads(out)["config"]["train"]["stages"] == [1, 2]


def test_help_example_set_value_is_accepted(capsys):
    """The epilog shows ``--set stage2.lr=2e-5``; that spelling must work."""
    code, out, _ = _run(capsys, "--preset", "tiny", "--set", "stage2.lr=2e-5", "--describe")
    assert code == 0
    assert json.loads(out)["config"]["stage2"]["lr"] == 2e-5


def test_list_presets_into_a_closed_pipe_prints_no_traceback():
    import subprocess
    import sys

    from testkit import subprocess_env

    code = "from enhance.cli import main; import sys; sys.exit(main(['--list-presets']))"
    # `head -c 1` closes the pipe after one byte, before the listing is written
    proc = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "{code}" | head -c 1 >/dev/null'],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
