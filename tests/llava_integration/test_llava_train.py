"""Training: frozen tower, what moves per stage, exact resume, the CLI end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from testkit import set_flags, tiny_llava_sizes

from genhancer.runtime import checkpoint as ckpt
from llava_integration.cli import main
from llava_integration.config import LlavaTrainConfig, load_config
from llava_integration.stages import LlavaTask, configure_stage


def _cfg(tiny_dirs, *extra: str) -> LlavaTrainConfig:
    return load_config(
        "tiny",
        None,
        [
            f"model.vision_tower={tiny_dirs['tower']}",
            f"model.llm={tiny_dirs['llm']}",
            "data.toy_pretrain_size=16",
            "data.toy_finetune_size=24",
            "data.toy_eval_size=2",
            "data.max_length=96",
            "pretrain.global_batch_size=4",
            "pretrain.per_device_batch_size=2",
            "finetune.global_batch_size=4",
            "finetune.per_device_batch_size=4",
            "logging.progress=false",
            "logging.every=1",
            "train.eval_toy=false",
            *extra,
        ],
    )


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _finetune_stream(model, proc, toy_data, **kw):
    """Batches of 4 from the first 16 toy finetune records (vicuna_v1, max length 128)."""
    from llava_integration.data import LlavaStream, load_records
    from llava_integration.model import num_image_tokens
    from llava_integration.templates import TEMPLATES

    return iter(
        LlavaStream(
            load_records(toy_data / "finetune.json", 16),
            toy_data,
            proc.tokenizer,
            proc.image_processor,
            TEMPLATES["vicuna_v1"],
            model.config.image_token_id,
            num_image_tokens(model.config),
            128,
            4,
            0,
            **kw,
        )
    )


@pytest.mark.parametrize("trainable", ["projector", "full", "lora"])
def test_tower_frozen_and_the_right_parts_move(tiny_llava, toy_data, trainable):
    model, proc = tiny_llava
    st = LlavaTrainConfig().finetune
    st.trainable, st.lora_r, st.lora_alpha = trainable, 4, 8
    groups = configure_stage(model, "finetune", st)
    task = LlavaTask(model).train()
    assert not model.model.vision_tower.training
    parts = {
        "tower": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "lm": model.model.language_model,
    }
    before = {k: _snapshot(m) for k, m in parts.items()}
    opt = torch.optim.AdamW(groups, lr=1e-2)
    stream = _finetune_stream(model, proc, toy_data)
    for _ in range(3):
        batch = next(stream)
        task.training_forward(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert _changed(before["tower"], parts["tower"]) == set()
    assert _changed(before["projector"], parts["projector"])
    moved_lm = _changed(before["lm"], parts["lm"])
    if trainable == "projector":
        assert moved_lm == set()
    elif trainable == "full":
        assert moved_lm
    else:
        assert moved_lm and all("lora_" in k for k in moved_lm)


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


class Killed(Exception):
    pass


def test_resume_is_exact(tiny_dirs, tmp_path, monkeypatch):
    """pretrain 4 + finetune 4 uninterrupted == the same run killed after finetune step 2, resumed."""
    import llava_integration.train as T

    cfg = _cfg(tiny_dirs, "pretrain.steps=4", "finetune.steps=4", "checkpoint.every=2")
    T.run(cfg, tmp_path / "whole")

    import genhancer.runtime.driver as D

    real = D.Loop

    def dying(*args, **kwargs):
        if args[5].name == "finetune":

            def kill(step: int) -> None:
                if step == 2:
                    raise Killed

            kwargs["on_checkpoint"] = kill
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "Loop", dying)
    part = tmp_path / "part"
    with pytest.raises(Killed):
        T.run(cfg, part)
    assert ckpt.latest_checkpoint(part / "checkpoints").name == "finetune_step0000002"
    assert not (part / "final").exists()
    monkeypatch.setattr(D, "Loop", real)
    T.run(cfg, part, resume=True)

    a, b = _weights(tmp_path / "whole"), _weights(part)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["stage"] == "finetune"] == [1, 2, 3, 4]


def test_resume_refuses_a_changed_config(tiny_dirs, tmp_path):
    from genhancer.runtime.errors import UserError
    from llava_integration.train import run

    run(_cfg(tiny_dirs, "pretrain.steps=2", "train.stages=[pretrain]"), tmp_path / "r")
    with pytest.raises(UserError, match="pretrain.lr"):
        run(
            _cfg(tiny_dirs, "pretrain.steps=2", "pretrain.lr=0.5", "train.stages=[pretrain]"),
            tmp_path / "r",
            resume=True,
        )
    with pytest.raises(UserError, match="already holds a run"):
        run(_cfg(tiny_dirs, "pretrain.steps=2"), tmp_path / "r")


def test_cli_end_to_end(tiny_dirs, tmp_path, capsys):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "run"
    args = ["--preset", "tiny", "--vision-tower", str(tiny_dirs["tower"]), "--output-dir", str(out)]
    sets = [
        "--set",
        f"model.llm={tiny_dirs['llm']}",
        "--set",
        "pretrain.steps=2",
        "--set",
        "finetune.steps=2",
    ]
    sets += set_flags(_small_sets())
    assert main(args + sets) == 0
    for name in ("config.yaml", "metrics.jsonl", "report.json", "pretrain/projector.safetensors"):
        assert (out / name).is_file(), name
    assert ckpt.list_checkpoints(out / "checkpoints")
    LlavaForConditionalGeneration.from_pretrained(out / "final")
    AutoProcessor.from_pretrained(out / "final")
    report = json.loads(capsys.readouterr().out)
    assert report["toy_eval"]["n"] == 2 * 6 and 0 <= report["toy_eval"]["accuracy"] <= 1

    # finetune alone from the pretrain product (--projector), and without it: a clear error
    args2 = ["--preset", "tiny", "--vision-tower", str(tiny_dirs["tower"]), "--stage", "finetune"]
    assert (
        main(args2 + sets + ["--projector", str(out / "pretrain"), "--output-dir", str(tmp_path / "ft")]) == 0
    )
    assert main(args2 + sets + ["--output-dir", str(tmp_path / "ft2")]) == 2
    assert "--projector" in capsys.readouterr().err


def _small_sets() -> list[str]:
    return [*tiny_llava_sizes(8, 4), "logging.progress=false"]


def test_lora_finetune_saves_a_merged_plain_model(tiny_dirs, tmp_path):
    from safetensors.torch import load_file

    from llava_integration.train import run

    cfg = _cfg(
        tiny_dirs,
        "pretrain.steps=1",
        "finetune.steps=2",
        "finetune.trainable=lora",
        "finetune.lora_r=4",
        "finetune.lora_alpha=8",
    )
    run(cfg, tmp_path / "lora")
    keys = load_file(tmp_path / "lora" / "final" / "model.safetensors").keys()
    assert not any("lora_" in k or "base_model" in k for k in keys)
    state = ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "lora" / "checkpoints"))
    assert state and all("lora_" in k or "multi_modal_projector" in k for k in state)


def test_cosine_schedule_with_warmup():
    from genhancer.runtime.optim import cosine_lambda

    f = cosine_lambda(3, 100)
    assert [f(0), f(1), f(2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f(3) == pytest.approx(1.0) and f(100) == pytest.approx(0.0)
    assert f(51) == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch(tiny_dirs, tmp_path):
    """The same tiny run as two data-parallel CPU processes (gloo): finishes and loads back.

    torchrun, not ``accelerate launch --cpu --num_processes 2``: accelerate 1.15 starts a single
    process for that command line."""
    import os
    import subprocess
    import sys

    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "ddp"
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2"]
    cmd += ["-m", "llava_integration", "--preset", "tiny", "--vision-tower", str(tiny_dirs["tower"])]
    cmd += ["--output-dir", str(out), "--set", f"model.llm={tiny_dirs['llm']}"]
    cmd += set_flags([*_small_sets(), "pretrain.steps=2", "finetune.steps=2"])
    cmd += ["--set", "pretrain.per_device_batch_size=2", "--set", "finetune.per_device_batch_size=2"]
    subprocess.run(cmd, check=True, timeout=600)
    LlavaForConditionalGeneration.from_pretrained(out / "final")
    state = ckpt.read_state(ckpt.latest_checkpoint(out / "checkpoints"))
    assert state["world_size"] == 2 and len(state["positions"]) == 2


def test_lora_adapters_do_not_depend_on_the_global_rng(tiny_model_cfg):
    """A run resumed after pretrain adds LoRA with a different global RNG state than an
    uninterrupted one; the adapters must still be the same (seeded from train.seed)."""
    from llava_integration.model import build

    st = LlavaTrainConfig().finetune
    st.trainable, st.lora_r, st.lora_alpha = "lora", 4, 8
    adapters = []
    for noise in (1, 2):
        model, _ = build(tiny_model_cfg, seed=0)
        torch.manual_seed(noise)  # whatever pretrain (or nothing, after a resume) left behind
        configure_stage(model, "finetune", st, seed=7)
        adapters.append({k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k})
    assert adapters[0] and adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    model, _ = build(tiny_model_cfg, seed=0)
    configure_stage(model, "finetune", st, seed=8)
    other = {k: v for k, v in model.state_dict().items() if "lora_A" in k}
    assert not all(torch.equal(other[k], adapters[0][k]) for k in other)  # the seed matters


def test_a_crash_before_the_pretrain_folder_is_written_is_repaired_on_resume(
    tiny_dirs, tmp_path, monkeypatch
):
    """Killed after pretrain's final checkpoint but before DIR/pretrain was complete: --resume skips
    the finished stage and still writes DIR/pretrain, equal to an uninterrupted run's."""
    from safetensors.torch import load_file

    import llava_integration.model as M
    import llava_integration.train as T

    cfg = _cfg(tiny_dirs, "pretrain.steps=2", "finetune.steps=1", "checkpoint.every=1")
    T.run(cfg, tmp_path / "whole")
    real = M.save_projector

    def torn(model, out_dir, *args, **kwargs):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / M.PROJECTOR_FILE).write_bytes(b"half")  # no meta file: incomplete
        raise Killed

    monkeypatch.setattr(M, "save_projector", torn)
    with pytest.raises(Killed):
        T.run(cfg, tmp_path / "part")
    assert ckpt.latest_checkpoint(tmp_path / "part" / "checkpoints").name == "pretrain_step0000002"
    monkeypatch.setattr(M, "save_projector", real)
    T.run(cfg, tmp_path / "part", resume=True)
    a = load_file(tmp_path / "whole" / "pretrain" / M.PROJECTOR_FILE)
    b = load_file(tmp_path / "part" / "pretrain" / M.PROJECTOR_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "part" / "pretrain" / M.PROJECTOR_META).is_file()


def _moved_fraction(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    moved = sum(int((after[k].float() != before[k].float()).sum()) for k in before)
    return moved / sum(v.numel() for v in before.values())


def _finetune_steps(model, proc, toy_data, task, lr: float, steps: int) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    stream = _finetune_stream(model, proc, toy_data, group_by_modality=False)
    task.train()
    for _ in range(steps):
        task.training_forward(next(stream))["loss"].backward()
        opt.step()
        opt.zero_grad()


def test_bf16_weights_train_through_fp32_copies(tiny_model_cfg, toy_data):
    """Loaded in bf16, finetuned 3 steps at lr 2e-5: with fp32 trainable copies almost every
    trainable weight moves; updating the bf16 weights in place leaves most of them where they were."""
    import dataclasses

    from llava_integration.model import build
    from llava_integration.stages import keep_trainable_fp32

    cfg = dataclasses.replace(tiny_model_cfg, dtype="bfloat16")
    st = LlavaTrainConfig().finetune  # trainable=full
    fractions = {}
    for fp32 in (True, False):
        model, proc = build(cfg, seed=0)
        configure_stage(model, "finetune", st)
        before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        tower = _snapshot(model.model.vision_tower)
        if fp32:
            assert keep_trainable_fp32(model) == sum(v.numel() for v in before.values())
        task = LlavaTask(model, autocast_dtype=torch.bfloat16)
        _finetune_steps(model, proc, toy_data, task, lr=2e-5, steps=3)
        after = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        assert all(v.dtype == (torch.float32 if fp32 else torch.bfloat16) for v in after.values())
        assert _changed(tower, model.model.vision_tower) == set()
        assert next(model.model.vision_tower.parameters()).dtype == torch.bfloat16  # frozen: stays bf16
        fractions[fp32] = _moved_fraction(before, after)
    assert fractions[True] > 0.95
    assert fractions[False] < 0.5  # what the fp32 copies are for


def test_a_bf16_run_keeps_fp32_trainable_weights_and_saves_bf16(tiny_dirs, tmp_path):
    """Through llava-train itself: pretrain at lr 2e-5 on a bf16 model moves the projector (its
    checkpoint holds the fp32 copies); DIR/final is saved in the dtype the model was loaded in."""
    from safetensors.torch import load_file

    from llava_integration.model import build
    from llava_integration.train import run

    cfg = _cfg(
        tiny_dirs,
        "model.dtype=bfloat16",
        "train.stages=[pretrain]",
        "pretrain.steps=3",
        "pretrain.lr=2e-5",
        "pretrain.warmup_ratio=0",
        "checkpoint.every=3",
    )
    run(cfg, tmp_path / "r")
    init, _ = build(cfg.model, seed=cfg.train.seed)
    prefix = "llava.model.multi_modal_projector."
    start = {prefix + k: v for k, v in init.model.multi_modal_projector.state_dict().items()}
    state = ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "r" / "checkpoints"))
    assert set(state) == set(start) and all(v.dtype == torch.float32 for v in state.values())
    assert _moved_fraction(start, state) > 0.95
    final = load_file(tmp_path / "r" / "final" / "model.safetensors")
    assert {v.dtype for v in final.values()} == {torch.bfloat16}
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(
        m["data"] == {"rows": 16, "kept": 16, "tolerated": {}, "skipped": {}} for m in metrics
    )


def test_tf32_is_switched_on_for_cuda_matmuls():
    from llava_integration.train import enable_tf32

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        enable_tf32()
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("preset", ["llava15-7b", "llava15-7b-lora"])
def test_paper_presets_train_on_a_llama_tokenizer_and_llava_layout(preset, tiny_dirs, llava_layout, tmp_path):
    """The 7B presets (bf16, plain then vicuna_v1, LCS-558K and mix665k layouts) run both stages on a
    tiny random Llama that carries the real Llama 2 tokenizer, on CPU."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "run"
    args = ["--preset", preset, "--vision-tower", str(tiny_dirs["tower"]), "--data-root", str(llava_layout)]
    sets = [
        f"model.llm={tiny_dirs['llm_llama']}",
        "pretrain.steps=1",
        "finetune.steps=1",
        "pretrain.global_batch_size=4",
        "pretrain.per_device_batch_size=2",
        "finetune.global_batch_size=4",
        "finetune.per_device_batch_size=2",
        "finetune.lora_r=4",
        "finetune.lora_alpha=8",
        "data.num_workers=0",
        "logging.progress=false",
        "logging.every=1",
    ]
    assert main(args + set_flags(sets) + ["--output-dir", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["step"]) for m in metrics] == [("pretrain", 1), ("finetune", 1)]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert metrics[0]["data"] == {"rows": 8, "kept": 8, "tolerated": {}, "skipped": {}}
    assert metrics[1]["data"]["skipped"] == {"bad_turn": 1, "image_token_without_image": 1}
    assert metrics[1]["data"]["tolerated"] == {"leading_gpt_turn_dropped": 1}
    model = LlavaForConditionalGeneration.from_pretrained(out / "final")
    assert model.dtype == torch.bfloat16
    processor = AutoProcessor.from_pretrained(out / "final")
    assert processor.image_processor.do_pad  # finetuned last: pad to square
    assert processor.tokenizer("\n", add_special_tokens=False).input_ids == [29871, 13]
