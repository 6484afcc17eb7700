"""Leaderboard tab: shows the files `leaderboard` wrote, or says what to run."""

from __future__ import annotations

from demo.leaderboard_view import load_leaderboard
from eval.report import plot_mmvp_patterns, render_markdown


def _records():
    return [
        {"model": m, "benchmark": "mmvp_vlm", "metric": k, "value": v, "dataset": "toy", "revision": "r"}
        for m, base in (("original", 20.0), ("enhanced", 40.0))
        for k, v in (("color", base), ("text", base / 2), ("average", base * 0.75))
    ]


def test_reads_markdown_and_plots(tmp_path):
    (tmp_path / "leaderboard.md").write_text(render_markdown(_records()))
    plot_mmvp_patterns(_records(), tmp_path / "mmvp_vlm_patterns.png")
    view = load_leaderboard(str(tmp_path))
    assert view.message == ""
    assert "| enhanced |" in view.markdown and "**40.0**" in view.markdown
    assert view.plots == [str(tmp_path / "mmvp_vlm_patterns.png")]


def test_messages(tmp_path):
    assert "--results DIR" in load_leaderboard("").message
    assert "does not exist" in load_leaderboard(str(tmp_path / "nope")).message
    assert "no leaderboard.md" in load_leaderboard(str(tmp_path)).message
