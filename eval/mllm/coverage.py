"""Which rows a set of MLLM sample logs holds, checked against each benchmark's official size.

Rows are keyed by (task, split, doc_id): lmms-eval numbers ``doc_id`` from 0 in every task, so
``cv_bench_2d`` and ``cv_bench_3d`` (or ``scienceqa`` and ``scienceqa_img``) share doc ids, and a
key without the task would merge their rows. :func:`check_rows` counts duplicate keys, holes in a
task's doc ids, doc ids past a task's official size, and two tasks covering the same part of a
benchmark (``pope`` with ``pope_random``); each is a problem that ``leaderboard rescore`` reports
and refuses unless asked. A run is *complete* when its rows add up to the benchmark's official
size with no problem; otherwise it is *partial* (a ``--limit`` run, a toy fixture, one of two
halves), and the records say so.

Official sizes: the datasets' cards (``lmms-lab-eval/MMVP`` 300, ``nyu-visionx/CV-Bench`` 2,638 =
1,438 2D + 1,200 3D, ``BaiqiL/NaturalBench-lmms-eval`` 7,600 = 1,900 groups x 4,
``lmms-lab/POPE`` 3 x 3,000, ``lmms-lab/HallusionBench`` 951 image + 178 non_image,
``lmms-lab/ScienceQA`` 2,017 IMG test / 4,241 FULL test).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eval.mllm.scoring import Sample

#: Official number of rows (questions) of each benchmark as the paper scores it.
OFFICIAL_ROWS: dict[str, int] = {
    "mmvp": 300,
    "cv_bench": 2638,
    "naturalbench": 7600,
    "pope": 9000,
    "hallusion_bench": 1129,
    "scienceqa_img": 2017,
}


@dataclass(frozen=True)
class TaskInfo:
    """What one lmms-eval task covers.

    Attributes:
        benchmark: our benchmark name.
        parts: the slices of the benchmark its rows are (POPE splits, CV-Bench 2D/3D, ...).
        size: its official number of rows.
        group: metric prefix of a separate score (ScienceQA-FULL is not the IMG subset: ``full/``).
    """

    benchmark: str
    parts: tuple[str, ...]
    size: int
    group: str = ""


#: Built-in task names (and ours, without the ``genhancer_`` prefix) -> what they cover.
TASK_INFO: dict[str, TaskInfo] = {
    "mmvp": TaskInfo("mmvp", ("all",), 300),
    "cv_bench": TaskInfo("cv_bench", ("2D", "3D"), 2638),
    "cv_bench_2d": TaskInfo("cv_bench", ("2D",), 1438),
    "cv_bench_3d": TaskInfo("cv_bench", ("3D",), 1200),
    "naturalbench": TaskInfo("naturalbench", ("all",), 7600),
    "pope": TaskInfo("pope", ("random", "popular", "adversarial"), 9000),
    "pope_random": TaskInfo("pope", ("random",), 3000),
    "pope_pop": TaskInfo("pope", ("popular",), 3000),
    "pope_adv": TaskInfo("pope", ("adversarial",), 3000),
    "hallusion_bench_image": TaskInfo("hallusion_bench", ("image",), 951),
    "hallusion_bench_non_image": TaskInfo("hallusion_bench", ("non_image",), 178),
    "scienceqa_img": TaskInfo("scienceqa_img", ("img",), 2017),
    "scienceqa": TaskInfo("scienceqa_img", ("full",), 4241, "full/"),
}

_SAMPLES = re.compile(r"samples_(.+?)\.jsonl?$")


def task_name(source: str | Path) -> str:
    """The task of a sample log: ``<date>_samples_<task>.jsonl`` (lmms-eval), ``samples_<task>.jsonl``
    (our audit logs) or a bare task name; else the file's stem."""
    name = Path(str(source)).name
    m = _SAMPLES.search(name)
    if m:
        return m.group(1)
    return name[: -len(".jsonl")] if name.endswith(".jsonl") else name


def task_info(task: str) -> TaskInfo | None:
    """The :class:`TaskInfo` of a task name (``genhancer_`` prefix and ``_lik`` suffix ignored)."""
    base = task.removeprefix("genhancer_").removesuffix("_lik")
    return TASK_INFO.get(base)


@dataclass
class RowReport:
    """Rows per task, the problems found, and whether the rows make a complete official run."""

    benchmark: str
    rows: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)
    official_rows: int = 0

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def problems(self) -> list[str]:
        """One line per kind of problem, with counts per task; empty when the rows are clean."""
        out = []
        for what, per in (("duplicate", self.duplicates), ("missing", self.missing), ("extra", self.extra)):
            if any(per.values()):
                parts = ", ".join(f"{t}: {n}" for t, n in per.items() if n)
                out.append(f"{sum(per.values())} {what} row(s) ({parts})")
        out += self.overlaps
        return out

    @property
    def complete(self) -> bool:
        return not self.problems() and self.total == self.official_rows

    def coverage(self) -> str:
        """``complete (N rows)`` or ``partial: N of M rows``, with the rows per task."""
        per = ", ".join(f"{t} {n}" for t, n in self.rows.items())
        if self.complete:
            return f"complete ({self.total} rows: {per})"
        return f"partial: {self.total} of {self.official_rows} rows ({per})"

    def fields(self) -> dict:
        """What a results record keeps of this report."""
        return {
            "rows": self.total,
            "official_rows": self.official_rows,
            "complete": self.complete,
            "rows_per_task": dict(self.rows),
            "row_problems": self.problems(),
        }


def check_rows(
    benchmark: str, samples: Sequence[Sample], left_out: int = 0, official_rows: int | None = None
) -> RowReport:
    """Count rows per task and every duplicate, missing and extra row, keyed by (task, split, doc_id).

    ``left_out``: rows a scorer could not use (an MMVP question without its pair, a NaturalBench
    row without its group), added to ``missing``. ``official_rows``: the size a complete run has
    (default: the benchmark's).
    """
    if official_rows is None:
        official_rows = OFFICIAL_ROWS.get(benchmark, 0)
    report = RowReport(benchmark, official_rows=official_rows)
    keys = Counter((s.source, s.split, s.doc_id) for s in samples)
    ids: dict[str, set[int]] = defaultdict(set)
    for (task, _, doc_id), n in keys.items():
        ids[task].add(doc_id)
        report.rows[task] = report.rows.get(task, 0) + 1
        if n > 1:
            report.duplicates[task] = report.duplicates.get(task, 0) + n - 1
    covered: dict[str, list[str]] = defaultdict(list)
    for task, seen in ids.items():
        info = task_info(task)
        top = max(seen) + 1
        if info is not None and info.benchmark == benchmark:
            report.extra[task] = sum(1 for i in seen if i >= info.size)
            top = min(top, info.size)
            for part in info.parts:
                covered[(info.group, part)].append(task)
        report.missing[task] = top - sum(1 for i in seen if i < top)
    if left_out:
        report.missing["pairs/groups"] = left_out
    for (_, part), tasks in covered.items():
        if len(tasks) > 1:
            report.overlaps.append(f"part '{part}' is in {len(tasks)} logs ({', '.join(sorted(tasks))})")
    return report


def group_official_rows(benchmark: str, group: str) -> int:
    """Rows of a complete run of one score group (ScienceQA-FULL: its own 4,241)."""
    sizes = {i.size for i in TASK_INFO.values() if i.benchmark == benchmark and i.group == group and group}
    return sizes.pop() if len(sizes) == 1 else OFFICIAL_ROWS.get(benchmark, 0)


def groups(samples: Iterable[Sample], default: str = "") -> dict[str, list[Sample]]:
    """Samples split by score group (metric prefix): ScienceQA-FULL rows apart from IMG rows."""
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        info = task_info(s.source)
        out[info.group if info is not None else default].append(s)
    return dict(out)
