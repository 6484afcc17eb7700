"""The installed environment: upstream entry points we depend on, the lock, and `genhancer-env`.

These run first in spirit: when an upstream release breaks an import or a helper that our commands
reach only deep inside a benchmark run, the failure shows up here as one named test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from genhancer.runtime import envreport

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / envreport.LOCK_NAME


def test_lmms_eval_filelock_patch_runs(tmp_path):
    """lmms-eval 0.7.3's simple_evaluate starts by patching filelock through ``filelock._api``
    (removed in filelock 4). Run that step alone and check the patch does what it is for: one lock
    object per path, shared by ``filelock.FileLock`` and ``datasets``' FileLock subclass."""
    import filelock
    from datasets.utils import _filelock as datasets_filelock
    from lmms_eval import evaluator

    evaluator._enable_reentrant_filelocks()
    path = str(tmp_path / "x.lock")
    a = filelock.FileLock(path)
    b = datasets_filelock.FileLock(path)
    assert a is b
    with a, b:  # re-entrant: the nested acquire of the same path must not deadlock
        assert a.is_locked


def test_lmms_eval_entry_points_import():
    """Every lmms-eval name our code imports, so a rename upstream fails here by name."""
    from lmms_eval.api.model import lmms  # noqa: F401
    from lmms_eval.evaluator import simple_evaluate  # noqa: F401
    from lmms_eval.models import MODEL_REGISTRY_V2  # noqa: F401
    from lmms_eval.models.registry_v2 import ModelManifest  # noqa: F401
    from lmms_eval.tasks import TaskManager  # noqa: F401
    from lmms_eval.tasks.hallusion_bench import utils  # noqa: F401


def test_lock_satisfies_pyproject_ranges():
    """Each dependency range in pyproject.toml admits the version the lock pins (a range edited
    without `make lock` fails here), and the lock pins every one of them."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, as the lock
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = envreport.read_lock(LOCK)
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    problems = []
    for req in reqs:
        name = envreport.normalize(req.name)
        if name not in pins:
            problems.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}: lock has {pins[name]}, pyproject asks {req.specifier}")
    assert not problems, f"run `make lock`: {problems}"
    # lmms-eval 0.7.3 needs filelock < 4 (see pyproject.toml); the lock must keep it there.
    assert int(pins["filelock"].split(".")[0]) < 4


def test_read_lock_parses_pins_and_skips_hashes(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "# comment\n"
        "Open_Clip_Torch==3.3.0 \\\n"
        "    --hash=sha256:abc\n"
        "    # via genhancer\n"
        "torch==2.14.1+cu130 ; platform_machine == 'x86_64'\n"
        "uvicorn[standard]==0.30.0\n"
        "-e .\n"
    )
    assert envreport.read_lock(lock) == {
        "open-clip-torch": "3.3.0",
        "torch": "2.14.1+cu130",
        "uvicorn": "0.30.0",
    }


def test_lock_diff_names_changed_missing_and_extra():
    locked = {"torch": "2.14.1", "numpy": "2.4.6", "peft": "0.21.2"}
    installed = {"torch": "2.13.0", "numpy": "2.4.6", "gradio": "6.0.0", "pip": "25.0", "genhancer": "0.1.0"}
    d = envreport.lock_diff(locked, installed)
    assert d == {
        "changed": [{"package": "torch", "locked": "2.14.1", "installed": "2.13.0"}],
        "missing": ["peft"],
        "extra": ["gradio"],
    }


def test_env_report_json_and_text(capsys, tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("torch==0.0.1\nnot-a-real-package-xyz==1.0\n")
    assert envreport.main(["--json", "--lock", str(lock)]) == 0
    r = json.loads(capsys.readouterr().out)
    import torch

    assert (
        r["packages"]["torch"] == torch.__version__.split("+")[0]
        or r["packages"]["torch"] == torch.__version__
    )
    assert r["lock_diff"]["missing"] == ["not-a-real-package-xyz"]
    assert r["lock_diff"]["changed"][0]["package"] == "torch"
    assert r["gpu"]["cuda_available"] == torch.cuda.is_available()

    assert envreport.main(["--lock", str(lock)]) == 0
    text = capsys.readouterr().out
    assert "missing   not-a-real-package-xyz" in text and "transformers" in text


def test_env_report_missing_lock_is_exit_2(capsys, tmp_path):
    assert envreport.main(["--lock", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in capsys.readouterr().err


@pytest.mark.skipif(not LOCK.is_file(), reason="runs from a checkout with the lock")
def test_default_lock_is_the_checkouts():
    assert envreport.default_lock() == LOCK
