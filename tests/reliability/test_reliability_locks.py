"""The DeepSpeed lock installs on top of the main lock without changing it.

``make test-slow`` installs ``requirements/lock-deepspeed-py311-linux-x86_64.txt`` after the main
lock with ``--require-hashes``: every package the two share must be pinned to the same version with
the same hashes (else pip would swap a locked package, or refuse), its requirement must be the
``deepspeed`` extra of ``pyproject.toml``, and it must install the CPU-only build.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "requirements" / "lock-py311-linux-x86_64.txt"
DEEPSPEED = REPO / "requirements" / "lock-deepspeed-py311-linux-x86_64.txt"


def _pins(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """``{name: (version, hashes)}`` of a ``uv pip compile --generate-hashes`` file."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if m:
            name = m.group(1).lower()
            out[name] = (m.group(2), frozenset())
            continue
        h = re.search(r"--hash=(sha256:[0-9a-f]+)", line)
        if h and name:
            version, hashes = out[name]
            out[name] = (version, hashes | {h.group(1)})
    return out


def test_shared_packages_have_the_main_locks_pins_and_hashes():
    main, ds = _pins(MAIN), _pins(DEEPSPEED)
    assert "deepspeed" in ds and ds["deepspeed"][1], "deepspeed is pinned with a hash"
    assert all(hashes for _, hashes in ds.values()), "every pin carries hashes (--require-hashes)"
    shared = main.keys() & ds.keys()
    assert {"torch", "numpy", "pydantic"} <= shared
    assert {k: ds[k] for k in shared} == {k: main[k] for k in shared}


def test_the_group_is_the_pyproject_extra_and_builds_without_cuda():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = [line for line in (REPO / "requirements" / "deepspeed.in").read_text().splitlines()]
    assert [x for x in wanted if x and not x.startswith("#")] == extra["deepspeed"]
    makefile = (REPO / "Makefile").read_text()
    install = next(line for line in makefile.splitlines() if "$(DS_LOCK)" in line and "pip install" in line)
    assert "DS_BUILD_OPS=0" in install and "--require-hashes" in install and "--no-build-isolation" in install
    test_slow = makefile.split("\ntest-slow:", 1)[1].split("\n\n", 1)[0]
    assert "$(DS_STAMP)" in test_slow and "GENHANCER_REQUIRE_DEEPSPEED=1" in test_slow
