"""Score the towers the method authors released beside the numbers their papers print.

"My reproduction scores below the paper: is it my training or my evaluation?" The check is to
score the published towers with this evaluation. A ``released-<backbone>`` preset names the
original tower and the GenHancer, DIVA and DCR releases for one backbone (``released.towers``:
folders, hub ids, ``hf:`` specs, ``WEIGHTS::BASE`` state dicts, so a user edits one YAML); each is
scored as a CLIP model of the board under its method's name, and :func:`comparison_markdown` sets
each MMVP-VLM number beside the GenHancer paper's and the DCR paper's for that tower, flagging a
published number that lies outside our bootstrap interval (``ci`` of the record, over pairs).

The interval covers the sampling of benchmark items only: the published number of a tower scored
differently (DIVA's OpenAI towers average random patch tokens into the image embedding at
evaluation, see ``docs/released-towers.md``) or of another checkpoint can differ by more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from enhance.towers.spec import check_tower_spec, is_tower_spec
from eval.clip.mmvp_vlm import PATTERN_KEYS
from eval.config import LeaderboardConfig
from eval.leaderboard import ModelSpec
from eval.paper_numbers import BACKBONES, TABLE_NUMBERS, TABLES, paper_method
from genhancer.runtime.errors import UserError

#: Methods a released tower can be, as ``results.json``'s ``method`` names them.
METHODS = ("original", "genhancer", "diva", "dcr")
#: Half the last printed digit: a published 19.3 agrees with an interval ending at 19.26.
PRINT_TOLERANCE = 0.05


def released_models(cfg: LeaderboardConfig) -> tuple[list[ModelSpec], list[str]]:
    """The board's models (one per method, named by it) and notes for towers left out."""
    rel = cfg.released
    if rel.backbone not in BACKBONES:
        raise UserError(
            f"config key 'released.backbone': '{rel.backbone}' has no published rows; choose one of "
            f"{', '.join(BACKBONES)}"
        )
    models, notes = [], []
    for method, spec in rel.towers.items():
        if method not in METHODS:
            raise UserError(
                f"config key 'released.towers.{method}': unknown method; choose {', '.join(METHODS)}"
            )
        spec = str(spec or "").strip()
        if not spec:
            notes.append(f"{method}: no tower given (--set released.towers.{method}=SPEC)")
            continue
        if is_tower_spec(spec):
            check_tower_spec(spec, f"released.towers.{method}")
        elif spec.startswith(("/", "./", "../", "~")) and not Path(spec).expanduser().exists():
            raise UserError(f"released.towers.{method}: {spec} does not exist")
        models.append(ModelSpec(method, spec, extra={"method": method, "released_backbone": rel.backbone}))
    if not models:
        raise UserError("config key 'released.towers' names no tower")
    return models, notes


@dataclass
class Comparison:
    """One of our numbers beside one published number for the same tower and metric."""

    model: str
    method: str
    metric: str
    ours: float
    low: float | None
    high: float | None
    unit: str
    paper: str
    table: str
    published: float

    @property
    def outside(self) -> bool | None:
        """Whether the published number lies outside our interval (None: no interval)."""
        if self.low is None or self.high is None:
            return None
        return not (self.low - PRINT_TOLERANCE <= self.published <= self.high + PRINT_TOLERANCE)


def compare(records: list[dict], backbone: str) -> list[Comparison]:
    """Every MMVP-VLM record of a released tower of ``backbone`` beside every published row for it."""
    label, res = BACKBONES[backbone]
    out = []
    for r in records:
        if r.get("benchmark") != "mmvp_vlm" or r.get("released_backbone") != backbone:
            continue
        if not isinstance(r.get("value"), int | float):
            continue
        ci = r.get("ci") or {}
        for paper, tables in TABLES.items():
            name = paper_method(paper, str(r.get("method")))
            row = tables.get("mmvp_vlm", {}).get((label, res, name)) if name else None
            if row is None or r["metric"] not in row:
                continue
            out.append(
                Comparison(
                    model=r["model"],
                    method=str(r.get("method")),
                    metric=r["metric"],
                    ours=float(r["value"]),
                    low=ci.get("low"),
                    high=ci.get("high"),
                    unit=str(ci.get("unit", "")),
                    paper=paper,
                    table=f"{paper} {TABLE_NUMBERS.get((paper, 'mmvp_vlm'), '')}: {name}",
                    published=float(row[r["metric"]]),
                )
            )
    return out


def _cell(c: Comparison) -> str:
    flag = {True: " **outside**", False: "", None: " (no interval)"}[c.outside]
    return f"{c.published:.1f} ({c.published - c.ours:+.1f}){flag}"


def comparison_markdown(records: list[dict], cfg: LeaderboardConfig, notes: list[str] = ()) -> str:
    """The released-tower table: our MMVP-VLM average with its interval, each paper's number and
    its difference, flagged when outside; then the patterns where a paper's number is outside."""
    backbone = cfg.released.backbone
    rows = compare(records, backbone)
    label, res = BACKBONES[backbone]
    papers = list(TABLES)
    lines = [
        f"## Released towers: {label}@{res} (MMVP-VLM)",
        "",
        "Ours: the average with its 95 % bootstrap interval. Each paper column: its printed number "
        "(paper − ours); **outside** = the printed number lies outside our interval.",
        "",
        "| tower | method | ours [95 % interval] (unit) | " + " | ".join(f"{p} paper" for p in papers) + " |",
        "|---|---|---|" + "---|" * len(papers),
    ]
    towers = list(dict.fromkeys(c.model for c in rows))
    for model in towers:
        mine = [c for c in rows if c.model == model and c.metric == "average"]
        if not mine:
            continue
        c0 = mine[0]
        interval = f"[{c0.low:.1f}, {c0.high:.1f}] ({c0.unit})" if c0.low is not None else "(no interval)"
        cells = []
        for p in papers:
            match = [c for c in mine if c.paper == p]
            cells.append(_cell(match[0]) if match else "–")
        lines.append(f"| {model} | {c0.method} | {c0.ours:.1f} {interval} | " + " | ".join(cells) + " |")
    flagged = [c for c in rows if c.metric != "average" and c.outside]
    if flagged:
        lines += ["", "Patterns where a printed number lies outside our interval:", ""]
        order = {k: i for i, k in enumerate(PATTERN_KEYS)}
        for c in sorted(flagged, key=lambda c: (towers.index(c.model), order.get(c.metric, 99), c.paper)):
            lines.append(
                f"- {c.model} / {c.metric}: ours {c.ours:.1f} [{c.low:.1f}, {c.high:.1f}], {c.table} {c.published:.1f}"
            )
    missing = [m for m in cfg.released.towers if m not in towers]
    for note in list(notes) + [
        f"{m}: not scored" for m in missing if not any(n.startswith(m + ":") for n in notes)
    ]:
        lines += ["", f"- {note}"]
    for method, note in cfg.released.notes.items():
        lines += ["", f"Note ({method}): {note}"]
    lines += [
        "",
        "The interval covers the sampling of benchmark pairs only, not training randomness nor a "
        "different scoring rule (docs/released-towers.md says what ours and the authors' scripts compute).",
        "",
    ]
    return "\n".join(lines)
