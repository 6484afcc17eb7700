"""`genhancer-demo` command line: flags (pinned), presets, config resolution, exit codes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from demo.cli import build_parser, main, resolve_config

FLAGS = [
    "--config",
    "--data-root",
    "--denoiser",
    "--enhanced",
    "--help",
    "--host",
    "--list-presets",
    "--llava-enhanced",
    "--llava-original",
    "--original",
    "--port",
    "--preset",
    "--print-config",
    "--results",
    "--set",
    "--share",
    "--threads",
]


def test_flag_list_is_pinned():
    flags = sorted(s for a in build_parser()._actions for s in a.option_strings if s.startswith("--"))
    assert flags == FLAGS  # a new knob is a config key reached through --set, not a new flag


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, time; t = time.time()\n"
        "from demo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'gradio', 'transformers') if m in sys.modules]\n"
        "print(heavy, time.time() - t, file=sys.stderr)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "genhancer-demo" in out.stdout and "--preset tiny" in out.stdout
    assert time.time() - start < 10


def test_tiny_preset_points_at_the_quickstart_run():
    _, cfg = resolve_config(["--preset", "tiny"])
    assert cfg.original == "genhancer-tiny:clip"
    assert cfg.enhanced == "runs/quickstart/enhance"
    assert cfg.results == "runs/quickstart/board"
    assert cfg.host == "127.0.0.1" and cfg.port == 7860 and cfg.share is False


def test_quickstart_llava_dirs_are_used_when_present(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/quickstart/llava-original/final").mkdir(parents=True)
    _, cfg = resolve_config(["--preset", "tiny"])
    assert cfg.llava_original == "runs/quickstart/llava-original/final" and cfg.llava_enhanced == ""


def test_precedence_preset_file_set_flags(tmp_path):
    f = tmp_path / "demo.yaml"
    f.write_text("preset: tiny\nport: 8000\nmax_new_tokens: 8\n")
    _, cfg = resolve_config(["--config", str(f), "--set", "port=8001", "--set", "prompt_prefix=no"])
    assert cfg.original == "genhancer-tiny:clip" and cfg.max_new_tokens == 8
    assert cfg.port == 8001 and cfg.prompt_prefix == "no"  # a str key keeps 'no' verbatim
    _, cfg = resolve_config(
        ["--config", str(f), "--set", "port=8001", "--port", "8002", "--host", "0.0.0.0", "--share"]
    )
    assert cfg.port == 8002 and cfg.host == "0.0.0.0" and cfg.share is True


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--port", "70000"], "'port'"),
        (["--set", "colour=red"], "unknown config key 'colour'"),
        (["--set", "concurrency=0"], "'concurrency' must be >= 1"),
        (["--set", "max_upload_mb=-1"], "max_upload_mb"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, text, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genhancer-demo: error:") and text in err and "\n" not in err


def test_list_presets_and_print_config(capsys):
    assert main(["--list-presets"]) == 0
    assert capsys.readouterr().out.startswith("tiny")
    assert main(["--preset", "tiny", "--port", "9999", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "port: 9999" in out and "host: 127.0.0.1" in out


def test_cli_serves_on_loopback(tmp_model_dirs, demo_run, tmp_path):
    """`genhancer-demo` as a user runs it: a subprocess answering on 127.0.0.1 only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "demo", "--original", str(tmp_model_dirs.clip), "--enhanced", str(demo_run)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200 and b"GenHancer" in r.read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    out = proc.stdout.read().decode() if proc.poll() is not None else ""
                    pytest.fail(f"demo did not come up: {out[-2000:]}")
                time.sleep(0.5)
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        if listening:
            ours = [line for line in listening.splitlines() if f":{port} " in line]
            assert ours and all("127.0.0.1" in line for line in ours), ours
    finally:
        proc.terminate()
        proc.wait(timeout=30)
