"""Every row of the README's bad-input table: exit code 2, one line naming the problem, nothing
written, and no model library imported before the error (each row in a fresh interpreter)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import subprocess_env

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "diffusers", "open_clip", "lmms_eval", "gradio")
MODULES = {
    "enhance": "enhance.cli",
    "llava-train": "llava_integration.cli",
    "leaderboard": "eval.cli",
    "genhancer-demo": "demo.cli",
}
_RUNNER = f"""
import contextlib, importlib, io, json, sys, time
module, argv = sys.argv[1], json.loads(sys.argv[2])
err = io.StringIO()
start = time.perf_counter()
with contextlib.redirect_stderr(err):
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit as exc:
        code = exc.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"code": code, "err": err.getvalue(), "heavy": heavy, "s": time.perf_counter() - start}}))
"""


def bad_input_rows() -> list[tuple[str, str]]:
    """``(command line, expected text)`` of the README's "Bad input" table."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Bad input\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = re.findall(r"`([^`]+)`", line)
        if line.startswith("| `") and len(cells) >= 2:
            rows.append((cells[0], cells[1]))
    return rows


ROWS = bad_input_rows()


def test_the_table_covers_every_command():
    assert len(ROWS) >= 30
    assert {shlex.split(cmd)[0] for cmd, _ in ROWS} == set(MODULES)


@pytest.mark.parametrize(("command", "expected"), ROWS, ids=[c for c, _ in ROWS])
def test_bad_input_is_refused_before_any_model_library_loads(command, expected, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    new = tmp_path / "new"
    prog, *argv = shlex.split(command)
    argv = [
        str(run) if a == "RUN" else str(new) if a == "DIR" else a.replace("DIR/", f"{new}/") for a in argv
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, MODULES[prog], json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = result["err"].strip().splitlines()
    assert result["code"] == 2 and len(lines) == 1, result
    assert lines[0].startswith(f"{prog}: error: ") and expected in lines[0], (expected, lines[0])
    assert result["heavy"] == [], f"imported {result['heavy']} before refusing {command!r}"
    assert not new.exists() and sorted(p.name for p in run.iterdir()) == ["config.yaml"]
