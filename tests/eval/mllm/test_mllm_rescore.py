"""``leaderboard rescore`` on sample logs written by lmms-eval itself (``simple_evaluate`` + its
``EvaluationTracker``, the code its CLI runs with ``--log_samples``), which drop ``doc``:

- an oracle that always answers right, in prose lmms-eval's parsers misread, scores 100;
- our registered ``genhancer_llava`` (tiny model, by name and model_args, as the CLI resolves it)
  rescores to exactly the numbers its rows give when ``doc`` is kept;
- several logs together (cv_bench_2d + cv_bench_3d, scienceqa + scienceqa_img, the POPE splits,
  HallusionBench's image + non_image) lose no row, and the counts are printed;
- duplicate, missing and extra rows stop the command unless --allow-partial.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.mllm.tasks import TASKS, builtin_tasks_dir, write_tasks

NB_ANSWERS = {"yes_no": ("Yes", "No", "No", "Yes"), "multiple_choice": ("A", "B", "B", "A")}


def _oracle_reply(doc: dict) -> str:
    if "Correct Answer" in doc:  # MMVP
        return f"The answer is {doc['Correct Answer'].strip('()').upper()}."
    if "source" in doc and "prompt" in doc:  # CV-Bench: lmms-eval reads "T"
        return f"The answer is {doc['answer']}."
    if "Question_Type" in doc:  # NaturalBench: right by position in the group
        return NB_ANSWERS[doc["Question_Type"]][doc["Index"] % 4]
    if "gt_answer" in doc:  # HallusionBench
        return "Yes, it is." if doc["gt_answer"] == "1" else "No, it is not."
    if "image_source" in doc:  # POPE: lmms-eval wants exactly "yes"/"no"
        return "Yes, there is." if doc["answer"] == "yes" else "No, there is not."
    return f"The answer is {'ABCDEFG'[doc['answer']]}."  # ScienceQA: lmms-eval says wrong


def _extra_tasks(root: Path, data: Path) -> list[str]:
    """Built-in tasks our leaderboard does not run, on the fixture data: cv_bench_2d / cv_bench_3d
    (the 2D and 3D rows), pooled pope, scienceqa (FULL: the IMG rows plus two text-only ones)."""
    from datasets import Dataset, concatenate_datasets, load_dataset

    def parquet(name: str) -> Dataset:
        return load_dataset("parquet", data_files=str(data / name), split="train")

    builtin = builtin_tasks_dir()
    out = root / "extra"
    out.mkdir(parents=True)
    cv = parquet("cv_bench/test.parquet")
    cv.filter(lambda r: r["type"] == "2D").to_parquet(str(out / "cv2d.parquet"))
    cv.filter(lambda r: r["type"] == "3D").to_parquet(str(out / "cv3d.parquet"))
    pooled = [parquet(f"pope/{s}.parquet") for s in ("adversarial", "popular", "random")]
    concatenate_datasets(pooled).to_parquet(str(out / "pope_all.parquet"))
    sqa = parquet("scienceqa_img/test.parquet")
    text_only = sqa.select(range(2)).map(lambda r: {"image": None, "question": "Which is a colour?"})
    concatenate_datasets([sqa, text_only]).to_parquet(str(out / "sqa_full.parquet"))
    specs = {
        "genhancer_cv_bench_2d": ("cv_bench/cv_bench_2d.yaml", "cv2d.parquet"),
        "genhancer_cv_bench_3d": ("cv_bench/cv_bench_3d.yaml", "cv3d.parquet"),
        "genhancer_pope": ("pope/pope.yaml", "pope_all.parquet"),
        "genhancer_scienceqa": ("scienceqa/scienceqa.yaml", "sqa_full.parquet"),
    }
    for name, (yaml, file) in specs.items():
        (out / f"{name}.yaml").write_text(
            f"include: {json.dumps(str(builtin / yaml))}\ntask: {name}\ntest_split: test\n"
            "dataset_path: parquet\ndataset_name: null\n"
            f"dataset_kwargs: {json.dumps({'data_files': {'test': [str(out / file)]}})}\n"
        )
    return list(specs)


def _evaluate(model, names: list[str], include: Path, out: Path, model_args: str) -> tuple[Path, dict]:
    """simple_evaluate, then save results and samples the way lmms-eval's CLI does (__main__.py:799-807)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager

    tm = TaskManager("WARNING", include_path=str(include), include_defaults=False)
    res = simple_evaluate(
        model=model, model_args=model_args, tasks=names, task_manager=tm, log_samples=True, bootstrap_iters=0
    )
    tracker = EvaluationTracker(output_path=str(out))
    tracker.general_config_tracker.log_experiment_args(
        "genhancer_llava" if isinstance(model, str) else "oracle", model_args, None, None, False
    )
    samples = res.pop("samples")  # the tracker pops doc from the rows it writes: give it copies
    tracker.save_results_aggregated(results=res, samples=samples, datetime_str="2026-01-01T00:00:00")
    for t in names:
        tracker.save_results_samples(task_name=t, samples=[dict(r) for r in samples[t]])
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder, {**res, "samples": samples}


@pytest.fixture(scope="module")
def logged(mllm_fixture_root, tmp_path_factory):
    """Every fixture task (plus the extra ones) answered by the oracle; logs as lmms-eval writes them."""
    from lmms_eval.api.model import lmms

    class Oracle(lmms):
        is_simple = True

        def generate_until(self, requests):
            return [_oracle_reply(self.task_dict[r.args[4]][r.args[5]][r.args[3]]) for r in requests]

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    out = tmp_path_factory.mktemp("logs")
    ts = write_tasks(out / "tasks", list(TASKS), mllm_fixture_root, ("likelihood", "generation"))
    names = [n for b in TASKS for n in ts.names(b)] + _extra_tasks(ts.root, mllm_fixture_root)
    return _evaluate(Oracle(), names, ts.root, out / "lmms", "pretrained=oracle")


def _rescore(capsys, *argv, code: int = 0) -> str:
    from eval.cli import main

    assert main(["rescore", *argv]) == code
    captured = capsys.readouterr()
    return captured.out + captured.err


def _files(folder: Path, *tasks: str) -> list[str]:
    return [str(folder / f"2026-01-01T00-00-00_samples_genhancer_{t}.jsonl") for t in tasks]


def test_logs_are_lmms_eval_0_7_3_format(logged):
    folder, _ = logged
    row = json.loads(Path(_files(folder, "pope_random")[0]).read_text().splitlines()[0])
    assert "doc" not in row and {"doc_id", "target", "input", "filtered_resps", "pope_accuracy"} <= set(row)
    nb = json.loads(Path(_files(folder, "naturalbench")[0]).read_text().splitlines()[0])
    assert nb["target"] == "answer"  # doc_to_target names a column the dataset lacks: the literal string


@pytest.mark.parametrize(
    "bench, tasks, want",
    [
        ("mmvp", ["mmvp"], {"pair_accuracy": 100.0, "question_accuracy": 100.0}),
        ("cv_bench", ["cv_bench"], {"ADE20K": 100.0, "overall": 100.0}),
        ("naturalbench", ["naturalbench", "naturalbench_lik"], {"Acc": 100.0, "G_Acc": 100.0, "gen_Q_Acc": 100.0}),
        (
            "pope",
            ["pope_random", "pope_pop", "pope_adv"],
            {"random/f1": 100.0, "popular/f1": 100.0, "adversarial/yes_ratio": 50.0},
        ),
        ("hallusion_bench", ["hallusion_bench_image", "hallusion_bench_non_image"], {"aAcc": 100.0, "qAcc": 100.0}),
        ("scienceqa_img", ["scienceqa_img"], {"accuracy": 100.0}),
    ],
)  # fmt: skip
def test_rescore_gives_official_numbers(logged, tmp_path, capsys, bench, tasks, want):
    folder, _ = logged
    text = _rescore(
        capsys, "--benchmark", bench, "--samples", *_files(folder, *tasks), "--output-dir", str(tmp_path)
    )
    records = json.loads((tmp_path / "results.json").read_text())
    got = {r["metric"]: r["value"] for r in records}
    assert {k: got[k] for k in want} == want
    assert all(r["model"] == "genhancer_llava" or r["model"] == "oracle" for r in records)
    assert all(r["source"] == "rescore" and r["complete"] is False for r in records)  # toy sizes
    assert bench in text and "counts:" in text and "partial:" in text
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Table 2" in md and "Coverage: oracle: partial:" in md and "†" in md


def test_hallusion_bench_scores_both_splits_together(logged, capsys, tmp_path):
    """aAcc and qAcc are over image + non_image (the VS questions asked without their figure)."""
    folder, _ = logged
    files = _files(folder, "hallusion_bench_image", "hallusion_bench_non_image")
    text = _rescore(
        capsys, "--benchmark", "hallusion_bench", "--samples", *files, "--output-dir", str(tmp_path)
    )
    rec = json.loads((tmp_path / "results.json").read_text())[0]
    assert rec["rows_per_task"] == {
        "genhancer_hallusion_bench_image": 8,
        "genhancer_hallusion_bench_non_image": 2,
    }
    assert rec["counts"]["questions"] == 10 and rec["official_rows"] == 1129 and "10 of 1129" in text


def test_cv_bench_2d_and_3d_logs_together_lose_no_row(logged, capsys, tmp_path):
    folder, _ = logged
    files = _files(folder, "cv_bench_2d", "cv_bench_3d")
    text = _rescore(capsys, "--benchmark", "cv_bench", "--samples", *files, "--output-dir", str(tmp_path))
    records = {r["metric"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    rec = records["overall"]
    # doc ids 0..3 (2D) and 0..1 (3D) overlap; keyed by task, all 6 rows stay.
    assert rec["rows_per_task"] == {"genhancer_cv_bench_2d": 4, "genhancer_cv_bench_3d": 2}
    assert rec["counts"] == {"ADE20K": 2, "COCO": 2, "Omni3D": 2} and rec["rows"] == 6
    assert {k: records[k]["value"] for k in ("ADE20K", "COCO", "Omni3D", "overall")} == dict.fromkeys(
        ("ADE20K", "COCO", "Omni3D", "overall"), 100.0
    )
    assert "genhancer_cv_bench_2d 4, genhancer_cv_bench_3d 2" in text and "6 of 2638" in text


def test_scienceqa_and_scienceqa_img_logs_together_lose_no_row(logged, capsys, tmp_path):
    folder, _ = logged
    files = _files(folder, "scienceqa", "scienceqa_img")
    text = _rescore(
        capsys, "--benchmark", "scienceqa_img", "--samples", *files, "--output-dir", str(tmp_path)
    )
    records = {r["metric"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert records["accuracy"]["rows_per_task"] == {"genhancer_scienceqa_img": 4}
    assert records["full/accuracy"]["rows_per_task"] == {"genhancer_scienceqa": 6}
    assert records["accuracy"]["value"] == records["full/accuracy"]["value"] == 100.0
    assert records["full/accuracy"]["official_rows"] == 4241 and "4 of 2017" in text and "6 of 4241" in text


def test_pooled_pope_log_says_which_task_to_run(logged, capsys, tmp_path):
    folder, _ = logged
    text = _rescore(
        capsys, "--benchmark", "pope", "--samples", *_files(folder, "pope"), "--output-dir", str(tmp_path)
    )
    got = {r["metric"]: r["value"] for r in json.loads((tmp_path / "results.json").read_text())}
    assert got["all/f1"] == 100.0 and not any(k.startswith("random/") for k in got)
    assert "run the 'pope_full' group (tasks pope_adv, pope_pop, pope_random) instead" in text


def test_duplicate_missing_and_extra_rows_stop_the_command(logged, capsys, tmp_path):
    folder, _ = logged
    pope = _files(folder, "pope_random")[0]
    err = _rescore(capsys, "--benchmark", "pope", "--samples", pope, pope, code=2)
    assert "4 duplicate row(s) (genhancer_pope_random: 4)" in err and "--allow-partial" in err
    err = _rescore(capsys, "--benchmark", "pope", "--samples", *_files(folder, "pope", "pope_random"), code=2)
    assert "part 'random' is in 2 logs (genhancer_pope, genhancer_pope_random)" in err

    lines = Path(pope).read_text().splitlines()
    holed = tmp_path / "2026-01-01T00-00-00_samples_genhancer_pope_random.jsonl"
    holed.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # doc 1 lost
    err = _rescore(capsys, "--benchmark", "pope", "--samples", str(holed), code=2)
    assert "1 missing row(s) (genhancer_pope_random: 1)" in err
    far = json.loads(lines[0]) | {"doc_id": 3000}  # pope_random has 3,000 rows: 0..2999
    holed.write_text("\n".join([*lines, json.dumps(far)]) + "\n")
    err = _rescore(capsys, "--benchmark", "pope", "--samples", str(holed), code=2)
    assert "1 extra row(s) (genhancer_pope_random: 1)" in err

    mmvp = Path(_files(folder, "mmvp")[0]).read_text().splitlines()
    half = tmp_path / "2026-01-01T00-00-00_samples_genhancer_mmvp.jsonl"
    half.write_text("\n".join(mmvp[:3]) + "\n")  # the second pair's partner is absent
    err = _rescore(capsys, "--benchmark", "mmvp", "--samples", str(half), code=2)
    assert "1 missing row(s) (pairs/groups: 1)" in err

    text = _rescore(
        capsys,
        "--benchmark",
        "pope",
        "--samples",
        pope,
        pope,
        "--allow-partial",
        "--output-dir",
        str(tmp_path / "o"),
    )
    rec = json.loads((tmp_path / "o" / "results.json").read_text())[0]
    assert rec["complete"] is False and rec["row_problems"] == [
        "4 duplicate row(s) (genhancer_pope_random: 4)"
    ]
    assert "warning: 4 duplicate row(s)" in text


def test_harness_scores_the_same_replies_lower(logged):
    _, res = logged
    r = res["results"]
    assert r["genhancer_cv_bench"]["cv_bench_acc,none"] == 0.0  # first letter "T"
    assert r["genhancer_pope_random"]["pope_accuracy,none"] == 0.0  # not exactly "yes"/"no"
    assert r["genhancer_scienceqa_img"]["exact_match,none"] == 0.0


def test_rescore_bad_input(logged, tmp_path, capsys):
    folder, _ = logged
    pope = _files(folder, "pope_random")[0]
    assert "choose from: mmvp" in _rescore(capsys, "--benchmark", "mme", "--samples", pope, code=2)
    err = _rescore(capsys, "--benchmark", "pope", "--samples", str(tmp_path / "none.jsonl"), code=2)
    assert "no such samples file" in err
    err = _rescore(capsys, "--benchmark", "hallusion_bench", "--samples", pope, code=2)
    assert "task 'genhancer_pope_random' (pope), not hallusion_bench" in err


# --- our registered model, run by name through lmms-eval ------------------------------------------


@pytest.fixture(scope="module")
def tiny_logged(tiny_llava_dir, mllm_fixture_root, tmp_path_factory):
    """``genhancer_llava`` resolved by name (as ``lmms-eval --model genhancer_llava`` does), answering
    NaturalBench by likelihood through its model_args, on the six benchmarks' fixture tasks."""
    from eval.mllm.lmms_model import register

    register()
    out = tmp_path_factory.mktemp("tiny_logs")
    ts = write_tasks(out / "tasks", list(TASKS), mllm_fixture_root, ("generation",))
    names = [n for b in TASKS for n in ts.names(b)]
    args = f"pretrained={tiny_llava_dir},device=cpu,max_new_tokens=4,batch_size=4,choice_mode=likelihood"
    return _evaluate("genhancer_llava", names, ts.root, out / "lmms", args)


def test_logs_of_our_model_rescore_to_the_numbers_their_full_rows_give(tiny_logged, capsys, tmp_path):
    """Rows without doc (rebuilt from the payloads, target and prompt) score exactly as the rows with
    doc that simple_evaluate returned; NaturalBench is read as likelihood from the run's model_args."""
    from eval.mllm.run import score_tasks
    from eval.mllm.samples import response_of, to_samples

    folder, res = tiny_logged
    for bench in TASKS:
        files = sorted(str(p) for p in folder.glob(f"*_samples_genhancer_{bench}*.jsonl"))
        out = tmp_path / bench
        _rescore(capsys, "--benchmark", bench, "--samples", *files, "--output-dir", str(out))
        got = {r["metric"]: r["value"] for r in json.loads((out / "results.json").read_text())}
        full = {
            t: to_samples(bench, res["samples"][t], t)
            for t in res["samples"]
            if t.startswith(f"genhancer_{bench}")
        }
        assert all("doc" in r for t in full for r in res["samples"][t])  # the rows kept their doc
        want, _ = score_tasks(
            bench, full, prefixes={t: "" for t in full} if bench == "naturalbench" else None
        )
        assert got == {r["metric"]: r["value"] for r in want}, bench
        if bench == "naturalbench":
            assert "G_Acc" in got and not any(k.startswith("gen_") for k in got)  # likelihood mode
            replies = {response_of(r) for r in res["samples"]["genhancer_naturalbench"]}
            assert replies <= {"Yes", "No", "A", "B"}
