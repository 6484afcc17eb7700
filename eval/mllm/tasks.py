"""lmms-eval task configs for the six MLLM benchmarks: the built-in tasks, re-pointed and renamed.

Each of our tasks is a YAML that ``include:``\\ s the built-in task file by absolute path (resolved
here, since site-packages differs per machine), so the built-in ``doc_to_visual``, ``doc_to_text``
and ``process_results`` run unchanged. What we change, and why:

- the name: ``genhancer_<task>``. A local task with a built-in name is silently ignored
  (``tasks/__init__.py:72`` merges built-ins last).
- the data, when local: ``dataset_path: parquet`` with absolute ``data_files`` (our toy fixtures,
  or the user's copies under ``--data-root``); otherwise the hub ids the built-in tasks name.
- NaturalBench's aggregations assert all 7600 rows (``naturalbench/utils.py:187``) and
  HallusionBench's call GPT-4 (``hallusion_bench/evaluate_hb.py:48``; offline every sample is
  scored 0 after ~10 s, and a second model in the same folder reuses stale verdicts); both are
  replaced by :mod:`eval.mllm.hooks`, which calls :mod:`eval.mllm.scoring`.
- ``genhancer_naturalbench_lik``: the same task with ``genhancer_choice_mode: likelihood`` in its
  generation kwargs, which :class:`eval.mllm.lmms_model.GenhancerLlava` answers by highest likelihood
  (the paper's Table 2 protocol).
- ``genhancer_hallusion_bench_non_image``: lmms-eval has a task for HallusionBench's ``image``
  split only (951 of the 1,129 questions the official aAcc and qAcc count); this one reads the
  ``non_image`` split (178 questions, no figure) with a ``doc_to_visual`` that accepts a missing
  image (the built-in one calls ``.convert`` on it, ``evaluate_hb.py:34``).

The generated folder is a normal ``--include_path`` for the ``lmms-eval`` CLI too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from genhancer.runtime.errors import UserError

TASK_PREFIX = "genhancer_"


@dataclass(frozen=True)
class TaskSpec:
    """One lmms-eval task of a benchmark.

    Attributes:
        benchmark: our benchmark name (as in ``results.json``).
        builtin: the built-in task file, relative to ``lmms_eval/tasks``.
        split: the split the task reads (``test_split``); local files are named after it.
        variant: suffix of our task name for variants of the same built-in task.
        extra: YAML text appended verbatim (metric overrides, generation kwargs).
        rename: our task's name stem when it is not the built-in one's (a split it has no task for).
    """

    benchmark: str
    builtin: str
    split: str
    variant: str = ""
    extra: str = ""
    rename: str = ""

    @property
    def builtin_name(self) -> str:
        return Path(self.builtin).stem

    @property
    def name(self) -> str:
        return f"{TASK_PREFIX}{self.rename or self.builtin_name}{self.variant}"


def _metrics(pairs: list[tuple[str, str]]) -> str:
    lines = ["metric_list:"]
    for metric, fn in pairs:
        lines += [
            f"  - metric: {metric}",
            f"    aggregation: !function eval.mllm.hooks.{fn}",
            "    higher_is_better: true",
        ]
    return "\n".join(lines) + "\n"


_NB_METRICS = _metrics(
    [
        ("naturalbench_G_ACC", "naturalbench_g_acc"),
        ("naturalbench_Q_ACC", "naturalbench_q_acc"),
        ("naturalbench_I_ACC", "naturalbench_i_acc"),
        ("naturalbench_Acc", "naturalbench_acc"),  # the key process_results emits (YAML says _ACC)
    ]
)
_NB_GEN = {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
_HB_METRICS = _metrics([("aAcc", "hallusion_aacc"), ("qAcc", "hallusion_qacc"), ("fAcc", "hallusion_facc")])

TASKS: dict[str, tuple[TaskSpec, ...]] = {
    "mmvp": (TaskSpec("mmvp", "mmvp/mmvp.yaml", "train"),),
    "cv_bench": (TaskSpec("cv_bench", "cv_bench/cv_bench.yaml", "test"),),
    "naturalbench": (
        TaskSpec(
            "naturalbench",
            "naturalbench/naturalbench.yaml",
            "test",
            "_lik",
            _NB_METRICS
            + "generation_kwargs: "
            + json.dumps({**_NB_GEN, "genhancer_choice_mode": "likelihood"})
            + "\n",
        ),
        TaskSpec("naturalbench", "naturalbench/naturalbench.yaml", "test", "", _NB_METRICS),
    ),
    "pope": (
        TaskSpec("pope", "pope/pope_random.yaml", "random"),
        TaskSpec("pope", "pope/pope_pop.yaml", "popular"),
        TaskSpec("pope", "pope/pope_adv.yaml", "adversarial"),
    ),
    "hallusion_bench": (
        TaskSpec("hallusion_bench", "hallusion_bench/hallusion_bench_image.yaml", "image", "", _HB_METRICS),
        TaskSpec(
            "hallusion_bench",
            "hallusion_bench/hallusion_bench_image.yaml",
            "non_image",
            "",
            _HB_METRICS + "doc_to_visual: !function eval.mllm.hooks.hb_doc_to_visual\n",
            rename="hallusion_bench_non_image",
        ),
    ),
    "scienceqa_img": (TaskSpec("scienceqa_img", "scienceqa/scienceqa_img.yaml", "test"),),
}


def builtin_tasks_dir() -> Path:
    import lmms_eval.tasks

    return Path(lmms_eval.tasks.__file__).parent


def find_split_files(folder: Path, split: str) -> list[Path]:
    """Parquet files of one split under ``folder``: ``split.parquet``, ``split-*.parquet`` (as the
    hub shards them, at any depth, e.g. ``data/test-00000-of-00001.parquet``) or ``split/*.parquet``."""
    found = [folder / f"{split}.parquet"] if (folder / f"{split}.parquet").is_file() else []
    found += sorted(folder.rglob(f"{split}-*.parquet"))
    if (folder / split).is_dir():
        found += sorted((folder / split).rglob("*.parquet"))
    return list(dict.fromkeys(found))


@dataclass
class TaskSet:
    """Generated task folder (an ``include_path``) and the task names per benchmark."""

    root: Path
    tasks: dict[str, list[TaskSpec]] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)  # benchmark -> data description

    def names(self, benchmark: str) -> list[str]:
        return [t.name for t in self.tasks[benchmark]]


def task_specs(benchmark: str, naturalbench_modes: tuple[str, ...] = ("likelihood",)) -> list[TaskSpec]:
    """The tasks a benchmark runs (NaturalBench: one per mode, ``likelihood`` and/or ``generation``)."""
    if benchmark not in TASKS:
        raise UserError(f"unknown MLLM benchmark '{benchmark}'; choose from: {', '.join(TASKS)}")
    specs = list(TASKS[benchmark])
    if benchmark == "naturalbench":
        bad = [m for m in naturalbench_modes if m not in ("likelihood", "generation")]
        if bad or not naturalbench_modes:
            raise UserError(
                f"naturalbench modes must be likelihood and/or generation, got {list(naturalbench_modes)}"
            )
        specs = [
            s for s in specs if ("likelihood" if s.variant == "_lik" else "generation") in naturalbench_modes
        ]
    return specs


def write_tasks(
    out_dir: str | Path,
    benchmarks: list[str],
    data_root: str | Path | None,
    naturalbench_modes: tuple[str, ...] = ("likelihood",),
) -> TaskSet:
    """Write one YAML per task under ``out_dir/<benchmark>/``; local data from ``data_root/<benchmark>/``.

    With ``data_root`` None the tasks read the hub datasets the built-in tasks name. A missing
    split fails here, naming the file expected.
    """
    out = Path(out_dir)
    builtin = builtin_tasks_dir()
    ts = TaskSet(out)
    for bench in benchmarks:
        specs = task_specs(bench, naturalbench_modes)
        folder = Path(data_root) / bench if data_root is not None else None
        (out / bench).mkdir(parents=True, exist_ok=True)
        sources = []
        for spec in specs:
            src = builtin / spec.builtin
            if not src.is_file():
                raise UserError(f"lmms-eval has no task file {src} (expected lmms-eval 0.7.x)")
            lines = [f"include: {json.dumps(str(src))}", f"task: {spec.name}", f"test_split: {spec.split}"]
            if folder is not None:
                files = find_split_files(folder, spec.split)
                if not files:
                    raise UserError(
                        f"benchmark '{bench}': no data for split '{spec.split}': expected "
                        f"{folder / (spec.split + '.parquet')} (or {spec.split}-*.parquet shards)"
                    )
                data_files = {spec.split: [str(f.resolve()) for f in files]}
                lines += [
                    "dataset_path: parquet",
                    "dataset_name: null",
                    f"dataset_kwargs: {json.dumps({'data_files': data_files})}",
                ]
                sources += [str(f) for f in files]
            (out / bench / f"{spec.name}.yaml").write_text("\n".join(lines) + "\n" + spec.extra)
        ts.tasks[bench] = specs
        ts.data[bench] = ", ".join(dict.fromkeys(sources)) if sources else "hub (built-in dataset_path)"
    return ts
