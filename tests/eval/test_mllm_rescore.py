"""``leaderboard rescore`` on sample logs written by lmms-eval itself: an oracle model that always
answers right, but in prose lmms-eval's parsers misread, scores 100 under official scoring."""

from __future__ import annotations

import json

import pytest

from eval.mllm_tasks import TASKS, write_tasks


def _oracle_reply(doc: dict) -> str:
    if "Correct Answer" in doc:  # MMVP
        return f"The answer is {doc['Correct Answer'].strip('()').upper()}."
    if "source" in doc and "prompt" in doc:  # CV-Bench: lmms-eval reads "T"
        return f"The answer is {doc['answer']}."
    if "Question_Type" in doc:  # NaturalBench
        return doc["answer"]
    if "gt_answer" in doc:  # HallusionBench
        return "Yes, it is." if doc["gt_answer"] == "1" else "No, it is not."
    if "image_source" in doc:  # POPE: lmms-eval wants exactly "yes"/"no"
        return "Yes, there is." if doc["answer"] == "yes" else "No, there is not."
    return f"The answer is {'ABCDEFG'[doc['answer']]}."  # ScienceQA: lmms-eval says wrong


@pytest.fixture(scope="module")
def logged(mllm_fixture_root, tmp_path_factory):
    """Run every fixture task with the oracle through simple_evaluate; save samples as lmms-eval does."""
    from lmms_eval.api.model import lmms
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager

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
    names = [n for b in TASKS for n in ts.names(b)]
    tm = TaskManager("WARNING", include_path=str(ts.root), include_defaults=False)
    res = simple_evaluate(model=Oracle(), tasks=names, task_manager=tm, log_samples=True, bootstrap_iters=0)
    tracker = EvaluationTracker(output_path=str(out / "lmms"))
    tracker.general_config_tracker.log_experiment_args("oracle", "pretrained=oracle", None, None, False)
    tracker.date_id = "2026-01-01T00-00-00"
    for t in names:
        tracker.save_results_samples(task_name=t, samples=res["samples"][t])
    folder = out / "lmms" / "oracle"
    return folder, res


def _rescore(capsys, *argv):
    from eval.cli import main

    assert main(["rescore", *argv]) == 0
    return capsys.readouterr().out


def test_logs_are_lmms_eval_0_7_3_format(logged):
    folder, _ = logged
    row = json.loads(
        (folder / "2026-01-01T00-00-00_samples_genhancer_pope_random.jsonl").read_text().splitlines()[0]
    )
    assert "doc" not in row and {"doc_id", "target", "input", "filtered_resps", "pope_accuracy"} <= set(row)


@pytest.mark.parametrize(
    "bench, pattern, want",
    [
        ("mmvp", "mmvp", {"pair_accuracy": 100.0, "question_accuracy": 100.0}),
        ("cv_bench", "cv_bench", {"ADE20K": 100.0, "overall": 100.0}),
        ("naturalbench", "naturalbench*", {"Acc": 100.0, "G_Acc": 100.0, "gen_Q_Acc": 100.0}),
        ("pope", "pope_*", {"random/f1": 100.0, "popular/f1": 100.0, "adversarial/yes_ratio": 50.0}),
        ("hallusion_bench", "hallusion*", {"aAcc": 100.0, "fAcc": 100.0, "qAcc": 100.0}),
        ("scienceqa_img", "scienceqa*", {"accuracy": 100.0}),
    ],
)
def test_rescore_gives_official_numbers(logged, tmp_path, capsys, bench, pattern, want):
    folder, _ = logged
    files = sorted(str(p) for p in folder.glob(f"*_samples_genhancer_{pattern}.jsonl"))
    assert files
    text = _rescore(capsys, "--benchmark", bench, "--samples", *files, "--output-dir", str(tmp_path))
    records = json.loads((tmp_path / "results.json").read_text())
    got = {r["metric"]: r["value"] for r in records}
    assert {k: got[k] for k in want} == want
    assert all(r["model"] == "oracle" and r["source"] == "rescore" for r in records)
    assert bench in text and "counts:" in text
    assert "Table 2" in (tmp_path / "leaderboard.md").read_text()


def test_harness_scores_the_same_replies_lower(logged):
    _, res = logged
    r = res["results"]
    assert r["genhancer_cv_bench"]["cv_bench_acc,none"] == 0.0  # first letter "T"
    assert r["genhancer_pope_random"]["pope_accuracy,none"] == 0.0  # not exactly "yes"/"no"
    assert r["genhancer_scienceqa_img"]["exact_match,none"] == 0.0


def test_rescore_bad_input(logged, tmp_path, capsys):
    from eval.cli import main

    folder, _ = logged
    pope = str(next(folder.glob("*_pope_random.jsonl")))
    assert main(["rescore", "--benchmark", "mme", "--samples", pope]) == 2
    assert "choose from: mmvp" in capsys.readouterr().err
    assert main(["rescore", "--benchmark", "pope", "--samples", str(tmp_path / "none.jsonl")]) == 2
    assert "no such samples file" in capsys.readouterr().err
    assert main(["rescore", "--benchmark", "hallusion_bench", "--samples", pope]) == 2
    assert "lacks" in capsys.readouterr().err
