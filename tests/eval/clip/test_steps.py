"""Checkpoint selection and evaluation dtype: every export of a run scored, the MMVP-VLM curve
against stage-2 step, and towers scored in float32 whatever dtype they were saved in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from testkit import set_flags

from eval.cli import main
from eval.clip.encoders import load_encoder, stored_dtype
from eval.clip.steps import expand_clip_spec, plot_step_curve, run_dir_models, step_curve
from genhancer.runtime.errors import UserError

SMALL = set_flags(["progress=false", "fixtures.image_size=32", "fixtures.pairs_per_pattern=2"])


@pytest.fixture(scope="module")
def bf16_clip(tmp_model_dirs, tmp_path_factory) -> Path:
    """The tiny test CLIP saved in bfloat16 (as the official code releases its towers)."""
    from transformers import CLIPModel, CLIPProcessor

    out = tmp_path_factory.mktemp("bf16") / "clip"
    CLIPModel.from_pretrained(tmp_model_dirs.clip).to(torch.bfloat16).save_pretrained(out)
    CLIPProcessor.from_pretrained(tmp_model_dirs.clip).save_pretrained(out)
    return out


def test_a_bf16_tower_is_scored_in_float32(bf16_clip):
    from transformers import CLIPModel

    assert stored_dtype(bf16_clip) == "bfloat16"
    enc = load_encoder(str(bf16_clip), device="cpu")
    assert (enc.weights_dtype, enc.eval_dtype) == ("bfloat16", "float32")
    assert {p.dtype for p in enc.model.parameters()} == {torch.float32}
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    ref = (
        CLIPModel.from_pretrained(bf16_clip, dtype=torch.bfloat16).float().eval()
    )  # the bf16 weights, upcast
    pixels = enc.preprocess(images)
    with torch.no_grad():
        expected = ref.visual_projection(ref.vision_model(pixel_values=pixels).pooler_output)
        in_bf16 = ref.to(torch.bfloat16)
        bf16_tokens = in_bf16.visual_projection(
            in_bf16.vision_model(pixel_values=pixels.bfloat16()).pooler_output
        ).float()
    got = enc.encode_images(images)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, bf16_tokens, atol=1e-5)  # scoring in bf16 would give other numbers


def test_results_record_the_saved_and_the_evaluation_dtype(bf16_clip, tmp_model_dirs, tmp_path):
    argv = ["--preset", "tiny", "--clip", f"half={bf16_clip}", f"full={tmp_model_dirs.clip}"]
    assert main([*argv, "--benchmarks", "mmvp_vlm", "--output-dir", str(tmp_path), *SMALL]) == 0
    records = json.loads((tmp_path / "results.json").read_text())
    dtypes = {(r["model"], r["weights_dtype"], r["eval_dtype"]) for r in records}
    assert dtypes == {("half", "bfloat16", "float32"), ("full", "float32", "float32")}


def _fake_run(root: Path, clip_dir: Path, steps: list[int], final: int | None) -> Path:
    """A run folder in enhance's export layout, each tower a copy of ``clip_dir``."""
    run = root / "run"
    for step in steps:
        folder = run / "export" / "steps" / str(step)
        shutil.copytree(clip_dir, folder / "hf")
        (folder / "genhancer_export.json").write_text(json.dumps({"stage2_step": step, "final": False}))
    shutil.copytree(clip_dir, run / "export" / "hf")
    (run / "export" / "genhancer_export.json").write_text(json.dumps({"stage2_step": final, "final": True}))
    return run


def test_run_and_glob_specs_expand_to_one_model_per_export(tmp_model_dirs, tmp_path):
    run = _fake_run(tmp_path, tmp_model_dirs.clip, [10, 20, 30], final=30)
    models = expand_clip_spec("x", f"run:{run}")
    assert [(m.name, m.extra["stage2_step"], m.extra["final_export"]) for m in models] == [
        ("x@10", 10, False),
        ("x@20", 20, False),
        ("x@30", 30, True),  # the final step has a per-step export: scored once
    ]
    globbed = expand_clip_spec("g", str(run / "export" / "steps" / "*"))
    assert [m.name for m in globbed] == ["g@10", "g@20", "g@30"] and globbed[-1].extra["final_export"]
    assert expand_clip_spec("plain", str(tmp_model_dirs.clip))[0].extra == {}

    other = _fake_run(tmp_path / "b", tmp_model_dirs.clip, [10, 20], final=25)  # 25 not a multiple of 10
    models = run_dir_models(other, "y")
    assert [m.name for m in models] == ["y@10", "y@20", "y@25"]
    assert models[-1].spec == str(other / "export" / "hf") and models[-1].extra["final_export"]
    with pytest.raises(UserError, match="matches no folder"):
        expand_clip_spec("z", str(tmp_path / "nothing" / "*"))
    with pytest.raises(UserError, match="no export/ folder"):
        run_dir_models(tmp_path / "nothing")


def test_leaderboard_plots_mmvp_vlm_against_stage2_step(tmp_model_dirs, tmp_path):
    run = _fake_run(tmp_path, tmp_model_dirs.clip, [10, 20], final=20)
    out = tmp_path / "board"
    argv = ["--preset", "tiny", "--clip", f"original={tmp_model_dirs.clip}", f"r=run:{run}"]
    assert main([*argv, "--benchmarks", "mmvp_vlm", "--output-dir", str(out), *SMALL]) == 0
    records = json.loads((out / "results.json").read_text())
    avg = {r["model"]: r for r in records if r["metric"] == "average"}
    assert set(avg) == {"original", "r@10", "r@20"}
    assert (avg["r@20"]["stage2_step"], avg["r@20"]["final_export"], avg["r@20"]["run"]) == (20, True, "r")
    assert "stage2_step" not in avg["original"]
    assert step_curve(records) == {"r": [(10, avg["r@10"]["value"], False), (20, avg["r@20"]["value"], True)]}
    assert (out / "mmvp_vlm_steps.png").read_bytes()[:4] == b"\x89PNG"
    assert "## MMVP-VLM against stage-2 step" in (out / "leaderboard.md").read_text()
    assert plot_step_curve([r for r in records if r["model"] == "original"], tmp_path / "none.png") is None
