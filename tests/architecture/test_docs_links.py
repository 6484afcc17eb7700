"""README and docs/ keep their promises: every relative link resolves (file and heading anchor),
every command shown in a shell block exists (its ``--help`` runs, its make target is defined), and
the README stays a front door (under 250 lines)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
#: The console scripts of pyproject.toml (run from the venv's bin/) and their modules.
SCRIPTS = {
    "enhance": "enhance",
    "llava-train": "llava_integration",
    "leaderboard": "eval",
    "genhancer-demo": "demo",
}


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    lines = page.read_text().splitlines()
    fenced = False
    out = set()
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no {dest.relative_to(ROOT) if ROOT in dest.parents else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


def _shell_commands() -> set[tuple[str, ...]]:
    """(program, subcommand?) of every command line in the pages' bash blocks."""
    found = set()
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                try:
                    words = shlex.split(line)
                except ValueError:
                    continue
                if words[0] == "accelerate" and "-m" in words:
                    words = [words[words.index("-m") + 1]]
                if words[0] in ("python", "python3") and words[1:2] == ["-m"]:
                    words = ["python -m " + words[2], *words[3:]]
                if words[0] == "make":
                    found.add(("make", words[1] if len(words) > 1 else ""))
                elif words[0] in SCRIPTS or words[0].startswith("genhancer-") or words[0] in SCRIPTS.values():
                    sub = words[1] if len(words) > 1 and re.fullmatch(r"[a-z][a-z-]*", words[1]) else ""
                    found.add((words[0], sub))
                elif words[0].startswith("python -m "):
                    found.add((words[0], ""))
    return found


def test_every_make_target_shown_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    shown = {t for prog, t in _shell_commands() if prog == "make" and t}
    assert shown and not shown - targets, sorted(shown - targets)


def _argv(prog: str, sub: str) -> list[str]:
    if prog.startswith("python -m "):
        return [sys.executable, "-m", prog.split()[-1]]
    if prog in SCRIPTS.values() and prog not in SCRIPTS:  # `accelerate launch -m MODULE`
        return [sys.executable, "-m", prog, *([sub] if sub else [])]
    return [str(Path(sys.executable).parent / prog), *([sub] if sub else [])]


def test_every_command_shown_answers_help():
    """Each distinct command (and subcommand) shown in a shell block runs ``--help`` with exit 0."""
    commands = sorted(c for c in _shell_commands() if c[0] != "make")
    assert ("enhance", "") in commands
    failed = []
    for prog, sub in commands:
        done = subprocess.run([*_argv(prog, sub), "--help"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            failed.append(f"{prog} {sub}: {done.stderr.strip().splitlines()[-1:]}")
    assert not failed, failed
