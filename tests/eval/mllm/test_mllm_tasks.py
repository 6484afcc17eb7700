"""Toy MLLM fixtures carry each real dataset's schema: lmms-eval's built-in task functions run on
them unchanged, through the task YAMLs we generate; bad data roots fail naming the file."""

from __future__ import annotations

import inspect

import pytest

from eval.mllm.tasks import TASKS, builtin_tasks_dir, find_split_files, task_specs, write_tasks
from genhancer.runtime.errors import UserError

# Columns (and types) of each dataset as lmms-eval 0.7.3's task code reads them; where each schema is
# documented: tests/README.md, "Benchmark fixtures".
SCHEMAS = {
    "mmvp/train": {"Index": "int32", "Question": "string", "Options": "string", "Correct Answer": "string",
                   "image": "Image"},
    "cv_bench/test": {"image": "Image", "choices": "List", "prompt": "string", "answer": "string", "idx": "int32",
                      "type": "string", "task": "string", "source": "string"},
    "naturalbench/test": {"Index": "int64", "Image": "Image", "Question": "string", "Question_Type": "string"},
    "pope/random": {"id": "string", "question_id": "string", "question": "string", "answer": "string",
                    "image_source": "string", "image": "Image", "category": "string"},
    "hallusion_bench/image": {k: "string" for k in ("category", "subcategory", "visual_input", "set_id", "figure_id",
                              "sample_note", "question_id", "question", "gt_answer_details", "gt_answer",
                              "filename")} | {"image": "Image"},
    "hallusion_bench/non_image": {k: "string" for k in ("category", "subcategory", "visual_input", "set_id",
                                  "figure_id", "sample_note", "question_id", "question", "gt_answer_details",
                                  "gt_answer", "filename")} | {"image": "Image"},
    "scienceqa_img/test": {"image": "Image", "question": "string", "choices": "List", "answer": "int8",
                           "hint": "string"},
}  # fmt: skip


def _kind(feature) -> str:
    name = type(feature).__name__
    return feature.dtype if name == "Value" else ("List" if name in ("List", "Sequence") else name)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_fixture_parquet_has_the_real_schema(mllm_fixture_root, name):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(mllm_fixture_root / f"{name}.parquet"), split="train")
    got = {k: _kind(f) for k, f in ds.features.items() if k in SCHEMAS[name]}
    assert got == SCHEMAS[name]
    image_col = "Image" if name.startswith("naturalbench") else "image"
    if name == "hallusion_bench/non_image":  # questions asked without a figure
        assert all(r["image"] is None and r["visual_input"] == "0" and r["category"] == "VS" for r in ds)
    else:
        assert hasattr(ds[0][image_col], "convert")  # decodes to PIL, as the hub copies do


def test_naturalbench_fixture_has_no_answer_column_and_official_row_order(mllm_fixture_root):
    """Only the columns the task code reads: the expected answers are positional (yes/A, no/B, no/B,
    yes/A), so a question is true of its own image: q0 names image 0's colour, q1 image 1's."""
    from datasets import load_dataset

    ds = load_dataset(
        "parquet", data_files=str(mllm_fixture_root / "naturalbench/test.parquet"), split="train"
    )
    assert set(ds.features) == {"Index", "Image", "Question", "Question_Type"}
    assert list(ds["Index"]) == list(range(len(ds))) and len(ds) % 4 == 0
    for g in range(len(ds) // 4):
        rows = [ds[4 * g + k] for k in range(4)]
        assert rows[0]["Question"] == rows[1]["Question"] != rows[2]["Question"] == rows[3]["Question"]


def _task_objects(root, tmp_path, benches):
    from lmms_eval.tasks import TaskManager, get_task_dict

    ts = write_tasks(tmp_path / "tasks", benches, root, ("likelihood", "generation"))
    tm = TaskManager("WARNING", include_path=str(ts.root), include_defaults=False)
    names = [n for b in benches for n in ts.names(b)]
    return ts, get_task_dict(names, tm)


def test_builtin_task_functions_run_on_the_fixtures(mllm_fixture_root, tmp_path):
    ts, tasks = _task_objects(mllm_fixture_root, tmp_path, list(TASKS))
    assert set(tasks) == {n for b in TASKS for n in ts.names(b)}
    for name, task in tasks.items():
        docs = list(task.test_docs())
        assert docs, name
        for doc in docs:
            text = task.doc_to_text(doc)
            visuals = task.doc_to_visual(doc)
            assert isinstance(text, str) and text
            assert len(visuals) == (0 if name.endswith("_non_image") else 1), name
            out = task.process_results(doc, ["Yes"])
            assert set(out) >= {m["metric"] for m in task.config.metric_list} - {"naturalbench_ACC"}
    cv = tasks["genhancer_cv_bench"]
    prompt = cv.doc_to_text(next(iter(cv.test_docs())))
    assert prompt.startswith("Note: You only need to respond with A, B") and "\n(A) " in prompt
    mmvp = tasks["genhancer_mmvp"]
    assert "\nA. " in mmvp.doc_to_text(next(iter(mmvp.test_docs())))


def test_overridden_aggregations_and_likelihood_variant(mllm_fixture_root, tmp_path):
    _, tasks = _task_objects(mllm_fixture_root, tmp_path, ["naturalbench", "hallusion_bench"])
    for name in (
        "genhancer_naturalbench",
        "genhancer_naturalbench_lik",
        "genhancer_hallusion_bench_image",
        "genhancer_hallusion_bench_non_image",
    ):
        aggs = tasks[name].aggregation()
        assert all(inspect.getmodule(fn).__name__ == "eval.mllm.hooks" for fn in aggs.values()), name
    assert "naturalbench_Acc" in tasks["genhancer_naturalbench"].aggregation()
    gk = tasks["genhancer_naturalbench_lik"].config.generation_kwargs
    assert gk["genhancer_choice_mode"] == "likelihood" and gk["max_new_tokens"] == 16
    assert "genhancer_choice_mode" not in tasks["genhancer_naturalbench"].config.generation_kwargs


def test_task_names_differ_from_builtin_ones():
    builtin = {p.stem for p in builtin_tasks_dir().rglob("*.yaml")}
    for specs in TASKS.values():
        for spec in specs:
            assert spec.name not in builtin and spec.builtin_name in builtin


def test_hub_mode_keeps_the_builtin_dataset(tmp_path):
    ts = write_tasks(tmp_path, ["pope", "hallusion_bench"], None)
    text = (tmp_path / "pope" / "genhancer_pope_adv.yaml").read_text()
    assert "dataset_path" not in text and ts.data["pope"].startswith("hub")
    hb = (tmp_path / "hallusion_bench" / "genhancer_hallusion_bench_non_image.yaml").read_text()
    assert "test_split: non_image" in hb and "eval.mllm.hooks.hb_doc_to_visual" in hb


def test_missing_split_names_the_file(mllm_fixture_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(mllm_fixture_root / "pope", root / "pope")
    (root / "pope" / "popular.parquet").unlink()
    with pytest.raises(UserError, match=r"split 'popular'.*pope/popular\.parquet"):
        write_tasks(tmp_path / "tasks", ["pope"], root)


def test_hub_style_shards_are_found(tmp_path):
    (tmp_path / "data").mkdir()
    shard = tmp_path / "data" / "test-00000-of-00002.parquet"
    shard.write_bytes(b"")
    (tmp_path / "data" / "test-00001-of-00002.parquet").write_bytes(b"")
    assert find_split_files(tmp_path, "test")[0] == shard and len(find_split_files(tmp_path, "test")) == 2
    assert find_split_files(tmp_path, "train") == []


def test_unknown_benchmark_and_modes():
    with pytest.raises(UserError, match="choose from: mmvp, cv_bench"):
        task_specs("mme")
    with pytest.raises(UserError, match="likelihood and/or generation"):
        task_specs("naturalbench", ("beam",))
    assert [s.name for s in task_specs("naturalbench", ("generation",))] == ["genhancer_naturalbench"]
