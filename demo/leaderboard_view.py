"""The leaderboard tab: ``leaderboard.md`` and its plots from a ``leaderboard --output-dir``.

Nothing is recomputed here: the tab shows the files the ``leaderboard`` command wrote, so the
page and the report cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LeaderboardView:
    markdown: str
    plots: list[str] = field(default_factory=list)  # PNG paths, in name order
    message: str = ""


def load_leaderboard(results_dir: str) -> LeaderboardView:
    """Read ``results_dir/leaderboard.md`` and list ``results_dir/*.png``."""
    if not results_dir:
        return LeaderboardView(
            "",
            message="no results folder was given (start the demo with --results DIR, a leaderboard --output-dir)",
        )
    root = Path(results_dir).expanduser()
    md = root / "leaderboard.md"
    if not md.is_file():
        hint = "the folder does not exist" if not root.is_dir() else "it has no leaderboard.md"
        return LeaderboardView(
            "", message=f"no leaderboard in {root} ({hint}); run `leaderboard --output-dir {root}` first"
        )
    plots = sorted(str(p) for p in root.glob("*.png"))
    return LeaderboardView(md.read_text(encoding="utf-8"), plots)
