"""Every row of the bad-input table (docs/guarantees.md): exit code 2, one line naming the problem, nothing
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
    """``(command line, expected text)`` of the "Bad input" table in docs/guarantees.md."""
    text = (REPO / "docs" / "guarantees.md").read_text()
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
    empty = tmp_path / "empty"
    empty.mkdir()
    prog, *argv = shlex.split(command)
    argv = [
        str(run)
        if a == "RUN"
        else str(new)
        if a == "DIR"
        else a.replace("EMPTY_DIR", str(empty)).replace("DIR/", f"{new}/")
        for a in argv
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


# Data paths that exist but cannot be trained on: found by the preflight from a few headers or
# bytes, before torch loads. Placeholders name the fixtures :func:`data_fixtures` writes.
DATA_ROWS = [
    (
        "enhance --preset tiny --set data.source=imagefolder --set data.path=EMPTY_DIR --output-dir DIR",
        "image folder EMPTY_DIR contains no images",
    ),
    (
        "enhance --preset tiny --set data.source=imagefolder --set data.path=TEXT_DIR --output-dir DIR",
        "contains no images",
    ),
    (
        "enhance --preset tiny --set data.source=imagefolder --set data.path=NOT_TAR --output-dir DIR",
        "is not a directory",
    ),
    (
        "enhance --preset tiny --set data.source=webdataset --set data.path=EMPTY_DIR --output-dir DIR",
        "holds no .tar shards",
    ),
    (
        "enhance --preset tiny --set data.source=webdataset --set data.path=NOT_TAR --output-dir DIR",
        "is not a tar shard",
    ),
    (
        "enhance --preset tiny --set data.source=webdataset --set data.path=TEXT_TAR --output-dir DIR",
        "stores no image member",
    ),
    (
        "enhance --preset tiny --set data.source=hf --set data.path=HF_NO_IMAGE --output-dir DIR",
        "has no column 'image' (columns: caption)",
    ),
    (
        "llava-train --preset llava15-7b --stage pretrain --data-root EMPTY_DIR --output-dir DIR",
        "pretrain.data_path: EMPTY_DIR/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json does not exist",
    ),
    (
        "llava-train --preset llava15-7b --stage pretrain --data-root LLAVA_OBJECT --output-dir DIR",
        "is not a JSON list of samples",
    ),
    (
        "llava-train --preset llava15-7b --stage pretrain --data-root LLAVA_NO_CONV --output-dir DIR",
        "the first sample has no 'conversations' list",
    ),
    (
        "llava-train --preset llava15-7b --stage pretrain --data-root LLAVA_JSON_DIR --output-dir DIR",
        "is a directory, not a LLaVA JSON file",
    ),
    (
        "llava-train --preset llava15-7b --stage pretrain --data-root LLAVA_NO_IMAGES --output-dir DIR",
        "pretrain.image_folder: LLAVA_NO_IMAGES/LLaVA-Pretrain/images does not exist",
    ),
    (
        "leaderboard --preset tiny --data-root /no/such/bench --output-dir DIR",
        "--data-root: /no/such/bench does not exist",
    ),
]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> dict[str, str]:
    return data_fixtures(tmp_path_factory.mktemp("bad-data"))


def data_fixtures(root: Path) -> dict[str, str]:
    """The folders and files :data:`DATA_ROWS` names, each wrong in one way."""
    import io
    import tarfile

    paths = {name: root / name.lower() for name in (
        "EMPTY_DIR", "TEXT_DIR", "NOT_TAR", "TEXT_TAR", "HF_NO_IMAGE",
        "LLAVA_OBJECT", "LLAVA_NO_CONV", "LLAVA_JSON_DIR", "LLAVA_NO_IMAGES",
    )}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    paths["NOT_TAR"] = root / "shard.tar"
    paths["TEXT_TAR"] = root / "captions.tar"
    paths["EMPTY_DIR"].mkdir()
    paths["TEXT_DIR"].mkdir()
    (paths["TEXT_DIR"] / "readme.txt").write_text("no images here\n")
    (paths["TEXT_DIR"] / ".hidden.jpg").write_bytes(b"\xff\xd8")  # hidden entries are ignored
    paths["NOT_TAR"].write_bytes(b"this is not a tar archive" * 40)
    with tarfile.open(paths["TEXT_TAR"], "w") as tar:
        for key in ("000000000", "000000001"):
            data = b"a caption"
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    import datasets  # the folder written by the library that owns the format

    datasets.Dataset.from_dict({"caption": ["a red square"]}).save_to_disk(str(paths["HF_NO_IMAGE"]))
    pretrain = "LLaVA-Pretrain"
    for name, body in (
        ("LLAVA_OBJECT", {"id": "1", "conversations": []}),
        ("LLAVA_NO_CONV", [{"id": "1", "image": "a.jpg", "messages": []}]),
        (
            "LLAVA_NO_IMAGES",
            [{"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "hi"}]}],
        ),
    ):
        (paths[name] / pretrain).mkdir(parents=True)
        (paths[name] / pretrain / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(body))
        if name != "LLAVA_NO_IMAGES":
            (paths[name] / pretrain / "images").mkdir()
    (paths["LLAVA_JSON_DIR"] / pretrain / "blip_laion_cc_sbu_558k.json").mkdir(parents=True)
    return {k: str(v) for k, v in paths.items()}


def _run_row(prog: str, argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[dict, float]:
    import time

    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, MODULES[prog], json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def _substitute(text: str, fixtures: dict[str, str], new: Path) -> str:
    for name in sorted(fixtures, key=len, reverse=True):
        text = text.replace(name, fixtures[name])
    return text.replace("DIR/", f"{new}/") if text != "DIR" else str(new)


@pytest.mark.parametrize(("command", "expected"), DATA_ROWS, ids=[c for c, _ in DATA_ROWS])
def test_bad_data_is_refused_before_any_model_library_loads(command, expected, tmp_path, bad_data):
    fixtures = bad_data
    new = tmp_path / "new"
    prog, *argv = shlex.split(command)
    argv = [_substitute(a, fixtures, new) for a in argv]
    result, _ = _run_row(prog, argv, tmp_path, subprocess_env())
    lines = result["err"].strip().splitlines()
    assert result["code"] == 2 and len(lines) == 1, result
    assert _substitute(expected, fixtures, new) in lines[0], (expected, lines[0])
    assert result["heavy"] == [], f"imported {result['heavy']} before refusing {command!r}"
    assert not new.exists()


def test_empty_image_folder_is_refused_in_seconds_on_a_cold_cache(tmp_path, bad_data):
    """The empty-folder row with nothing cached: no tiny model built, no hub cache touched, the
    error back in under 5 s (it used to build the tiny models first)."""
    fixtures = bad_data
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env() | {
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor"),
    }
    argv = shlex.split(DATA_ROWS[0][0])[1:]
    argv = [_substitute(a, fixtures, tmp_path / "new") for a in argv]
    result, wall = _run_row("enhance", argv, tmp_path, env)
    assert result["code"] == 2 and "contains no images" in result["err"], result
    assert result["heavy"] == []
    assert sorted(p.name for p in home.iterdir()) == [], "something was cached before the refusal"
    assert wall < 5.0, f"the empty-folder refusal took {wall:.1f} s (interpreter start included)"


def test_the_data_checks_accept_data_in_the_published_layouts(tmp_path):
    """No false refusals: a JPEG folder, an img2dataset-style shard, a ``save_to_disk`` dataset with
    an image column and a LLaVA JSON in its published schema all pass the preflight."""
    import io
    import tarfile

    import datasets
    from PIL import Image

    from genhancer.runtime.preflight import check_data, check_llava_json

    jpeg = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(jpeg, "JPEG")
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    (folder / "a.JPG").write_bytes(jpeg.getvalue())
    check_data("imagefolder", str(tmp_path / "images"))
    shard = tmp_path / "shards" / "00000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for name, data in (("000000000.txt", b"caption"), ("000000000.jpg", jpeg.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    check_data("webdataset", str(shard.parent))
    check_data("webdataset", str(shard))
    check_data("webdataset", str(tmp_path / "shards" / "{00000..00009}.tar"))  # left to the loader
    hf = tmp_path / "hf"
    datasets.Dataset.from_dict({"image": [Image.open(io.BytesIO(jpeg.getvalue()))]}).cast_column(
        "image", datasets.Image()
    ).save_to_disk(str(hf))
    check_data("hf", str(hf))
    row = {"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nhi"}]}
    llava = tmp_path / "llava.json"
    llava.write_text(json.dumps([row] * 3, indent=2))
    check_llava_json(llava, "pretrain.data_path")
    long_first = tmp_path / "long.json"  # a first row longer than the sniffed head: left to the loader
    long_first.write_text(json.dumps([{**row, "id": "x" * 5000}]))
    check_llava_json(long_first, "pretrain.data_path", head_bytes=1000)
