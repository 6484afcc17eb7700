"""``genhancer_llava``: the lmms-eval model over a saved tiny LLaVA (registration, batching,
until/max_new_tokens, likelihoods, resume from the response log, simple_evaluate end to end)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from eval.mllm.lmms_model import MODEL_NAME, GenhancerLlava, check_llava_dir
from genhancer.runtime.errors import UserError

TASK, SPLIT = "toy", "test"
DOCS = [
    {"image": Image.new("RGB", (32, 32), c), "Question_Type": qt}
    for c, qt in [((200, 30, 30), "yes_no"), ((30, 200, 30), "multiple_choice"), ((30, 30, 200), "other")]
]
PROMPTS = ["What color are the shapes?", "How many shapes are there?", "Where are the shapes?"]


@pytest.fixture(scope="module")
def lm(tiny_llava_dir):
    m = GenhancerLlava(pretrained=str(tiny_llava_dir), device="cpu", batch_size=2)
    m.task_dict = {TASK: {SPLIT: DOCS}}
    return m


def _gen(i: int, **gen_kwargs):
    from lmms_eval.api.instance import Instance

    args = (PROMPTS[i], gen_kwargs, lambda d: [d["image"]], i, TASK, SPLIT)
    return Instance("generate_until", args, 0, {"task": TASK, "doc_id": i, "repeats": 1})


def test_registered_for_simple_evaluate(tiny_llava_dir):
    from lmms_eval.models import get_model

    from eval.mllm.lmms_model import register

    register()
    cls = get_model(MODEL_NAME)
    assert cls is GenhancerLlava and cls.is_simple
    m = cls.create_from_arg_string(f"pretrained={tiny_llava_dir},batch_size=3", {"device": "cpu"})
    assert m.batch_size == 3 and str(m.device) == "cpu"


def test_generation_is_greedy_batched_and_matches_the_runner(lm):
    reqs = [_gen(i, max_new_tokens=6) for i in range(3)]
    out = lm.generate_until(reqs)
    assert out == lm.generate_until(reqs)  # deterministic
    one = [lm.runner.generate([DOCS[i]["image"]], [PROMPTS[i]], max_new_tokens=6)[0] for i in range(3)]
    assert out == one  # batching (2 + 1) changes nothing


def test_until_and_max_new_tokens(lm):
    full = lm.generate_until([_gen(0, max_new_tokens=8)])[0]
    words = full.split()
    assert len(words) >= 3
    cut = lm.generate_until([_gen(0, max_new_tokens=8, until=[words[2]])])[0]
    assert words[2] not in cut and full.startswith(cut.rstrip())
    short = lm.generate_until([_gen(0, max_new_tokens=2)])[0]
    assert len(lm.runner.tokenizer(short, add_special_tokens=False).input_ids) <= 2
    capped = GenhancerLlava(runner=lm.runner, max_new_tokens=1)
    capped.task_dict = lm.task_dict
    assert len(capped.generate_until([_gen(0, max_new_tokens=1024)])[0].split()) <= 1  # CV-Bench asks 1024


def test_likelihood_mode_picks_an_option_for_naturalbench_rows(lm):
    out = lm.generate_until([_gen(i, max_new_tokens=4, genhancer_choice_mode="likelihood") for i in range(3)])
    assert out[0] in ("Yes", "No") and out[1] in ("A", "B")
    scores = lm.runner.choice_likelihood(DOCS[1]["image"], PROMPTS[1], ["A", "B"])
    assert out[1] == ("A" if scores[0] >= scores[1] else "B")
    assert out[2] == lm.generate_until([_gen(2, max_new_tokens=4)])[0]  # not NaturalBench: generates


def test_loglikelihood_matches_the_runner_and_flags_greedy(lm):
    from lmms_eval.api.instance import Instance

    greedy = lm.runner.generate([DOCS[0]["image"]], [PROMPTS[0]], max_new_tokens=1)[0]
    conts = [" " + greedy, " red"]
    reqs = [
        Instance(
            "loglikelihood",
            (PROMPTS[0], c, lambda d: [d["image"]], 0, TASK, SPLIT),
            k,
            {"task": TASK, "doc_id": 0, "repeats": 1},
        )
        for k, c in enumerate(conts)
    ]
    out = lm.loglikelihood(reqs)
    want = lm.runner.choice_likelihood(DOCS[0]["image"], PROMPTS[0], [greedy, "red"])
    assert [o[0] for o in out] == pytest.approx(want)
    assert out[0][1] is True and (out[1][1] is (greedy == "red"))


def test_response_log_resumes_without_the_model(lm, tmp_path):
    from eval.mllm.lmms_model import ResponseLog

    log = tmp_path / "responses.jsonl"
    lm.responses = ResponseLog(log)
    first = lm.generate_until([_gen(i, max_new_tokens=5) for i in range(2)])
    with log.open("a") as f:
        f.write('{"key": "cut sho')  # an interrupted write
    lm.responses = ResponseLog(None)

    class Broken:
        def __getattr__(self, name):
            raise AssertionError("the model must not run for logged replies")

    again = GenhancerLlava(runner=lm.runner, response_log=str(log))
    again.runner = Broken()
    again.task_dict = lm.task_dict
    assert again.generate_until([_gen(i, max_new_tokens=5) for i in range(2)]) == first
    rows = [json.loads(x) for x in log.read_text().splitlines()[:2]]
    assert {r["doc_id"] for r in rows} == {0, 1} and all(r["task"] == TASK for r in rows)


def test_not_a_llava_checkpoint(tmp_path, tiny_llava_dir):
    with pytest.raises(UserError, match="no config.json"):
        check_llava_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(UserError, match="model_type='clip'"):
        GenhancerLlava(pretrained=str(tmp_path))
    assert check_llava_dir(tiny_llava_dir) == tiny_llava_dir


def test_simple_evaluate_through_the_model_class(lm, mllm_fixture_root, tmp_path):
    """lmms-eval's real task code (built-in doc_to_text/process_results) drives our model."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from eval.mllm.tasks import write_tasks

    ts = write_tasks(tmp_path / "tasks", ["pope", "naturalbench"], mllm_fixture_root, ("likelihood",))
    tm = TaskManager("WARNING", include_path=str(ts.root), include_defaults=False)
    names = ["genhancer_pope_random", "genhancer_naturalbench_lik"]
    capped = GenhancerLlava(runner=lm.runner, max_new_tokens=8)  # POPE asks for 128 new tokens
    res = simple_evaluate(
        model=capped, tasks=names, task_manager=tm, limit=4, log_samples=True, bootstrap_iters=0
    )
    assert "pope_f1_score,none" in res["results"]["genhancer_pope_random"]
    nb = res["samples"]["genhancer_naturalbench_lik"]
    assert len(nb) == 4 and all(s["filtered_resps"][0] in ("Yes", "No", "A", "B") for s in nb)
    assert res["results"]["genhancer_naturalbench_lik"]["naturalbench_G_ACC,none"] in (0.0, 1.0)


def test_lmms_eval_llava_hf_runs_our_dirs_with_the_same_prompt(tiny_llava_dir, lm, monkeypatch):
    """The saved chat template makes the built-in ``llava_hf`` prompt like our runner."""
    import sys
    import types

    from lmms_eval.api.instance import Instance

    if "decord" not in sys.modules:  # llava_hf imports it at module level, for video only
        try:
            import decord  # noqa: F401
        except ImportError:
            monkeypatch.setitem(sys.modules, "decord", types.SimpleNamespace(VideoReader=None, cpu=None))
    from lmms_eval.models.simple.llava_hf import LlavaHf

    hf = LlavaHf(
        pretrained=str(tiny_llava_dir), device="cpu", device_map="cpu", dtype="float32", batch_size=1
    )
    hf.task_dict = lm.task_dict
    gen = {"max_new_tokens": 6, "temperature": 0, "do_sample": False}
    req = Instance("generate_until", (PROMPTS[0], gen, lambda d: [d["image"]], 0, TASK, SPLIT), 0,
                   {"task": TASK, "doc_id": 0, "repeats": 1})  # fmt: skip
    assert hf.generate_until([req]) == lm.generate_until([_gen(0, max_new_tokens=6)])


def test_entry_point_payload_registers_the_model():
    from importlib.metadata import EntryPoint

    from lmms_eval.models.registry_v2 import ModelRegistryV2

    ep = EntryPoint(name="genhancer_llava", value="eval.mllm.lmms_entry:manifest", group="lmms_eval.models")
    registry = ModelRegistryV2()
    for m in registry._coerce_payload_to_manifests(ep.load()):
        registry.register_manifest(m)
    assert MODEL_NAME in registry.list_model_names()


def test_mllm_speed_bench_reports_questions_per_s(tiny_llava_dir, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "bench" / "mllm_speed.py"
    spec = importlib.util.spec_from_file_location("bench_mllm_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--pretrained", str(tiny_llava_dir), "--device", "cpu", "--batches", "1,3", "--questions", "5"]
    assert mod.main([*args, "--max-new-tokens", "3", "--rounds", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["questions_per_s"]) == {"1", "3"} and all(v > 0 for v in res["questions_per_s"].values())
    assert res["same_answers_as_batch_1"] == {"1": True, "3": True}  # batching changes no answer
