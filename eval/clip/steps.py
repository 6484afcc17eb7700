"""Checkpoint selection: score every per-step export of an ``enhance`` run, plot the curve.

``enhance`` writes the merged tower every ``stage2.export_every`` stage-2 steps to
``RUN/export/steps/<step>/`` (``genhancer_export.json`` in each names the step) and the final
tower to ``RUN/export/``. This module turns those folders into leaderboard models, one per step,
each carrying ``stage2_step`` and ``final_export`` into its ``results.json`` records, and draws
MMVP-VLM against the stage-2 step (the paper's Fig. 1(i)) with the final export marked.

Two ways to name them, both ``--clip`` specs, models ``NAME@<step>``:

* ``NAME=RUN/export/steps/*``: a glob (expanded here, so quoting does not matter);
* ``NAME=run:RUN``: every per-step export of the run plus its final one.
"""

from __future__ import annotations

import glob
from pathlib import Path

from enhance.layout import EXPORT_DIR, EXPORT_META, STEPS_DIR, list_step_exports, read_export_meta
from eval.leaderboard import ModelSpec
from eval.report import save_figure
from genhancer.runtime.errors import UserError

STEP_KEY = "stage2_step"
FINAL_KEY = "final_export"
GLOB_CHARS = ("*", "?", "[")
RUN_PREFIX = "run:"


def _step(folder: Path) -> int | None:
    meta = read_export_meta(folder, parent=False)
    return None if meta is None or meta.stage2_step is None else int(meta.stage2_step)


def export_step(folder: Path) -> int | None:
    """The stage-2 step of an export folder: its ``genhancer_export.json``, else a numeric name."""
    step = _step(folder)
    if step is not None:
        return step
    return int(folder.name) if folder.name.isdigit() else None


def _final_step(steps_dir: Path) -> int | None:
    """The step of the run's final export, when ``steps_dir`` is ``RUN/export/steps``."""
    return _step(steps_dir.parent)


def _step_models(
    name: str, folders: list[Path], final_step: int | None, run: str
) -> list[tuple[int, ModelSpec]]:
    found = []
    for folder in folders:
        step = export_step(folder)
        if step is None:
            raise UserError(
                f"'{folder}' is not a per-step export (no {EXPORT_META} with {STEP_KEY}, name not a number)"
            )
        found.append((step, folder))
    found.sort()
    last = final_step if final_step is not None else (found[-1][0] if found else None)
    return [
        (
            step,
            ModelSpec(f"{name}@{step}", str(f), extra={"run": run, STEP_KEY: step, FINAL_KEY: step == last}),
        )
        for step, f in found
    ]


def expand_clip_spec(name: str, spec: str) -> list[ModelSpec]:
    """``NAME=GLOB`` or ``NAME=run:RUN`` -> one model per export folder, ordered by step; any
    other spec is returned unchanged."""
    if spec.startswith(RUN_PREFIX):
        return run_dir_models(spec[len(RUN_PREFIX) :], name)
    if not any(c in spec for c in GLOB_CHARS):
        return [ModelSpec(name, spec)]
    folders = [Path(p) for p in sorted(glob.glob(str(Path(spec).expanduser()))) if Path(p).is_dir()]
    if not folders:
        raise UserError(f"--clip {name}={spec}: the pattern matches no folder")
    parents = {f.parent for f in folders}
    final = _final_step(parents.pop()) if len(parents) == 1 else None
    return [m for _, m in _step_models(name, folders, final, name)]


def run_dir_models(run_dir: str | Path, name: str = "") -> list[ModelSpec]:
    """Every per-step export of an ``enhance`` run folder, plus its final export (scored once when
    a per-step export already holds the final step)."""
    run = Path(run_dir).expanduser()
    export = run / EXPORT_DIR
    if not export.is_dir():
        raise UserError(f"run:{run_dir}: no export/ folder (is it an enhance run folder?)")
    steps_dir = export / STEPS_DIR
    folders = [p for _, p in list_step_exports(steps_dir)]
    final = _final_step(steps_dir)
    name = name or run.resolve().name
    found = _step_models(name, folders, final, name)
    tower = export / "hf" if (export / "hf").is_dir() else export / "open_clip"
    if tower.is_dir() and final is not None and final not in {s for s, _ in found}:
        # export_every does not divide the last step: the final export is its own point
        found.append(
            (
                final,
                ModelSpec(
                    f"{name}@{final}", str(tower), extra={"run": name, STEP_KEY: final, FINAL_KEY: True}
                ),
            )
        )
    elif tower.is_dir() and not found:  # no per-step exports, no step recorded: a reference line
        found.append((0, ModelSpec(f"{name}@final", str(tower), extra={"run": name})))
    if not found:
        raise UserError(f"run:{run_dir}: no exports under {export}")
    return [m for _, m in sorted(found, key=lambda x: x[0])]


def step_curve(records: list[dict], metric: str = "average") -> dict[str, list[tuple[int, float, bool]]]:
    """MMVP-VLM ``metric`` per run: ``{run: [(step, value, final), ...]}`` ordered by step."""
    curves: dict[str, list[tuple[int, float, bool]]] = {}
    for r in records:
        if r.get("benchmark") != "mmvp_vlm" or r.get("metric") != metric or r.get(STEP_KEY) is None:
            continue
        curves.setdefault(r.get("run") or r["model"], []).append(
            (int(r[STEP_KEY]), float(r["value"]), bool(r.get(FINAL_KEY)))
        )
    return {k: sorted(v) for k, v in curves.items()}


def plot_step_curve(records: list[dict], path: str | Path) -> Path | None:
    """MMVP-VLM average against stage-2 step per run (final export starred); models without a step
    (e.g. the original tower) are drawn as horizontal lines. None when no record has a step."""
    curves = step_curve(records)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, points in curves.items():
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o", label=run)
        for x, y, final in points:
            if final:
                ax.plot([x], [y], marker="*", markersize=16, color="tab:red", linestyle="none")
                ax.annotate(f"final {y:.1f}", (x, y), textcoords="offset points", xytext=(6, 6))
    flat = [
        r
        for r in records
        if r.get("benchmark") == "mmvp_vlm" and r.get("metric") == "average" and r.get(STEP_KEY) is None
    ]
    for r in flat:
        ax.axhline(float(r["value"]), linestyle="--", color="grey", linewidth=1)
        ax.annotate(r["model"], (0, float(r["value"])), xycoords=("axes fraction", "data"), fontsize=8)
    ax.set_xlabel("stage-2 step")
    ax.set_ylabel("MMVP-VLM average (%)")
    ax.set_title("MMVP-VLM against stage-2 step (final export starred)")
    return save_figure(fig, ax, path)


def curve_markdown(records: list[dict]) -> str:
    """The step curve as a markdown table (one row per run and step)."""
    curves = step_curve(records)
    if not curves:
        return ""
    lines = [
        "",
        "## MMVP-VLM against stage-2 step",
        "",
        "| run | step | average | final |",
        "|---|---|---|---|",
    ]
    for run, points in curves.items():
        lines += [f"| {run} | {s} | {v:.1f} | {'yes' if f else ''} |" for s, v, f in points]
    return "\n".join(lines) + "\n"
