"""The two-stage trainer end to end at tiny size: what trains, what stays frozen, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testkit import fit_fixed_batch

from enhance.train import run
from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime.errors import UserError


def _ckpt_weights(run_dir: Path, name: str | None = None) -> dict[str, torch.Tensor]:
    root = run_dir / "checkpoints"
    path = root / name if name else ckpt.latest_checkpoint(root)
    return ckpt.load_weights(path)


def _tower_state(model_dir: Path) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in load_file(model_dir / "model.safetensors").items() if k.startswith("vision_model.")
    }


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_stage1_trains_denoiser_and_leaves_tower_bit_identical(tmp_path, tiny_enhance_config, tmp_model_dirs):
    cfg = tiny_enhance_config("train.stages=[1]", "stage1.steps=3")
    run(cfg, tmp_path)
    # The exported tower (stage 1 only) equals the base tower exactly.
    base = _tower_state(tmp_model_dirs.clip)
    exported = _tower_state(tmp_path / "export" / "hf")
    assert base.keys() == exported.keys()
    assert all(torch.equal(base[k], exported[k]) for k in base)
    # Projector and denoiser moved away from their seeded initialisation.
    first = _ckpt_weights(tmp_path, "stage1_step0000001")
    last = _ckpt_weights(tmp_path)
    assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith("denoiser."))
    assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith("projector."))
    assert not any("lora_" in k for k in last)


def test_stage1_loss_falls_on_repeated_data(tmp_path, tiny_enhance_config):
    # A 4-image world at batch 4: every step sees the same images, so the loss must fall.
    cfg = tiny_enhance_config(
        "train.stages=[1]",
        "stage1.steps=30",
        "stage1.lr=3e-3",
        "data.toyworld_size=4",
        "checkpoint.every=30",
        "logging.every=5",
        "logging.preview_count=0",
        "method.flow.scale=0.5",
    )
    run(cfg, tmp_path)
    losses = [m["loss"] for m in _metrics(tmp_path)]
    assert sum(losses[-2:]) < 0.85 * sum(losses[:2]), losses


def test_flow_loss_falls_on_a_fixed_batch(tiny_genhancer_model, tiny_pixels, tiny_cfg):
    """Same images, same noise and timesteps every step: stage-1 training must fit them."""
    from enhance.stages import configure_stage

    model = tiny_genhancer_model
    before, after = fit_fixed_batch(model, configure_stage(model, 1, tiny_cfg), tiny_pixels, seed=7, steps=40)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("variant", ["stage2_only", "stage2_all"])
def test_stage2_variants_train_the_right_parameters(tmp_path, tiny_enhance_config, tmp_model_dirs, variant):
    cfg = tiny_enhance_config(f"stage2.variant={variant}", "stage2.lr=1e-2", "checkpoint.keep_last=10")
    run(cfg, tmp_path)
    end1 = _ckpt_weights(tmp_path, "stage1_step0000002")
    end2 = _ckpt_weights(tmp_path, "stage2_step0000002")
    lora = [k for k in end2 if "lora_B" in k]
    assert lora, "stage 2 must add LoRA weights"
    assert any(end2[k].abs().sum() > 0 for k in lora), "LoRA B starts at zero and must move"
    assert not any("text_model" in k for k in end2 if "lora_" in k), "LoRA must stay on the image side"
    head = [k for k in end1 if k.startswith(("projector.", "denoiser."))]
    same = all(torch.equal(end1[k], end2[k]) for k in head)
    assert same == (variant == "stage2_only")
    # The exported tower now differs from the base tower, and still loads with transformers.
    from transformers import AutoModel, AutoProcessor, CLIPVisionModel

    base = _tower_state(tmp_model_dirs.clip)
    exported = _tower_state(tmp_path / "export" / "hf")
    assert any(not torch.equal(base[k], exported[k]) for k in base)
    AutoModel.from_pretrained(tmp_path / "export" / "hf")
    AutoProcessor.from_pretrained(tmp_path / "export" / "hf")
    tower = CLIPVisionModel.from_pretrained(tmp_path / "export" / "vision_tower")
    assert tower.config.image_size == cfg.backbone.image_size


def test_run_folder_layout(tmp_path, tiny_enhance_config):
    run(tiny_enhance_config(), tmp_path)
    assert (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "metrics.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "denoiser",
        "genhancer_export.json",
        "hf",
        "vision_tower",
    ]
    meta = json.loads((tmp_path / "export" / "genhancer_export.json").read_text())
    assert (meta["stage2_step"], meta["final"], meta["dtype"]) == (2, True, "float32")
    assert list((tmp_path / "previews").glob("stage2_step*.png"))
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    # keep_last=2 prunes mid-stage checkpoints but never a stage's final one.
    assert "stage1_step0000002" in names and "stage2_step0000002" in names
    records = _metrics(tmp_path)
    assert {"stage", "step", "loss", "lr", "images_per_s", "skipped_images", "grad_norm"} <= records[0].keys()


class _Crash(Exception):
    pass


def test_interrupted_run_resumes_to_identical_weights(tmp_path, tiny_enhance_config, monkeypatch):
    overrides = (
        "stage1.steps=3",
        "stage2.steps=3",
        "checkpoint.keep_last=20",
        "logging.preview_count=0",
        "stage2.lora_dropout=0.5",
    )
    straight = tmp_path / "straight"
    run(tiny_enhance_config(*overrides), straight)

    # Crash right after the stage-2 checkpoint at step 1 has been committed.
    import genhancer.runtime.checkpoint as checkpoint

    real_save = checkpoint.save_training_state

    def crashing_save(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if path is not None and path.name == "stage2_step0000001":
            raise _Crash
        return path

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(checkpoint, "save_training_state", crashing_save)
    with pytest.raises(_Crash):
        run(tiny_enhance_config(*overrides), interrupted)
    monkeypatch.setattr(checkpoint, "save_training_state", real_save)
    assert not (interrupted / "export").exists()
    run(tiny_enhance_config(*overrides), interrupted, resume=True)

    a = _ckpt_weights(straight, "stage2_step0000003")
    b = _ckpt_weights(interrupted, "stage2_step0000003")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ta = _tower_state(straight / "export" / "hf")
    tb = _tower_state(interrupted / "export" / "hf")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_half_written_checkpoint_is_ignored_on_resume(tmp_path, tiny_enhance_config):
    cfg = tiny_enhance_config("train.stages=[1]", "stage1.steps=2", "logging.preview_count=0")
    run(cfg, tmp_path)
    # A checkpoint folder without its state.json (a crash mid-write) and a stray temp folder.
    root = tmp_path / "checkpoints"
    (root / "stage1_step0000009").mkdir()
    (root / ".stage1_step0000010.tmp").mkdir()
    assert ckpt.latest_checkpoint(root).name == "stage1_step0000002"
    run(
        tiny_enhance_config("train.stages=[1]", "stage1.steps=3", "logging.preview_count=0"),
        tmp_path,
        resume=True,
    )
    assert ckpt.latest_checkpoint(root).name == "stage1_step0000003"


def test_existing_run_is_not_overwritten(tmp_path, tiny_enhance_config):
    cfg = tiny_enhance_config("train.stages=[1]", "stage1.steps=1", "logging.preview_count=0")
    run(cfg, tmp_path)
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(UserError, match="--resume"):
        run(cfg, tmp_path)
    assert (tmp_path / "config.yaml").read_text() == before


def test_resume_refuses_a_changed_config(tmp_path, tiny_enhance_config):
    run(tiny_enhance_config("train.stages=[1]", "stage1.steps=2", "checkpoint.every=1"), tmp_path)
    with pytest.raises(UserError, match="stage1.lr"):
        run(tiny_enhance_config("train.stages=[1]", "stage1.steps=2", "stage1.lr=0.5"), tmp_path, resume=True)


def test_stage2_settings_may_change_after_stage1(tmp_path, tiny_enhance_config):
    """The README's `--stage 2 --resume --set stage2.lr=...` workflow."""
    run(tiny_enhance_config("train.stages=[1]"), tmp_path)
    run(tiny_enhance_config("train.stages=[2]", "stage2.lr=2e-5"), tmp_path, resume=True)
    assert (tmp_path / "checkpoints" / "stage2_step0000002").is_dir()


def test_stage2_resumed_alone_starts_from_stage1_weights(tmp_path, tiny_enhance_config):
    """`--stage 1`, then `--stage 2 --resume`, ends where one run of both stages ends: stage 2 loads
    the projector and denoiser stage 1 trained (not the fresh ones the model is built with)."""
    common = ("stage1.steps=2", "stage2.steps=2", "logging.preview_count=0", "checkpoint.keep_last=20")
    run(tiny_enhance_config(*common), tmp_path / "both")
    run(tiny_enhance_config(*common, "train.stages=[1]"), tmp_path / "split")
    run(tiny_enhance_config(*common, "train.stages=[2]"), tmp_path / "split", resume=True)
    a = _ckpt_weights(tmp_path / "both", "stage2_step0000002")
    b = _ckpt_weights(tmp_path / "split", "stage2_step0000002")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage2_alone_needs_stage1(tmp_path, tiny_enhance_config):
    with pytest.raises(UserError, match="stage 1"):
        run(tiny_enhance_config("train.stages=[2]"), tmp_path)
    assert not (tmp_path / "config.yaml").exists()


def test_one_stage_ablation_trains_everything(tmp_path, tiny_enhance_config):
    cfg = tiny_enhance_config("train.stages=[2]", "train.one_stage=true", "stage2.variant=stage2_only")
    run(cfg, tmp_path)
    w = _ckpt_weights(tmp_path)
    assert any("lora_" in k for k in w)
    assert (tmp_path / "export" / "hf").is_dir()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.source=imagefolder", "empty_images"),
        ("backbone.name_or_path=/nonexistent/tower", "/nonexistent/tower"),
        ("method.vae.name_or_path=/nonexistent/vae", "/nonexistent/vae"),
    ],
)
def test_bad_paths_fail_by_name_and_write_nothing(tmp_path, tiny_enhance_config, override, named):
    empty = tmp_path / "empty_images"
    empty.mkdir()
    out = tmp_path / "run"
    cfg = tiny_enhance_config(override, f"data.path={empty}")
    with pytest.raises(UserError, match=named):
        run(cfg, out)
    assert not out.exists()


def test_denoiser_can_start_from_a_pretrained_flux_transformer(tmp_path, tiny_enhance_config):
    """Ablation (paper Fig. 1 iv): denoiser.init_from loads a FLUX transformer instead of random init."""
    from enhance.denoisers.continuous import build_continuous_denoiser
    from enhance.train import build_model

    cfg = tiny_enhance_config()
    torch.manual_seed(123)
    pretrained = build_continuous_denoiser(cfg.method.denoiser, cfg.method.vae.latent_channels).transformer
    pretrained.save_pretrained(tmp_path / "flux" / "transformer")
    model = build_model(tiny_enhance_config(f"method.denoiser.init_from={tmp_path / 'flux'}"))
    got = model.denoiser.transformer.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in pretrained.state_dict().items())


def test_local_token_ablation_trains(tmp_path, tiny_enhance_config):
    cfg = tiny_enhance_config(
        "backbone.local_token_ratio=0.25", "train.stages=[1]", "logging.preview_count=0"
    )
    run(cfg, tmp_path)
    weights = _ckpt_weights(tmp_path)
    assert any(k.startswith("projector.local_head") for k in weights)


def _poison_second_step(monkeypatch):
    """Make the loss of the 2nd training_forward call NaN (its gradient is NaN too)."""
    from enhance.model import GenHancerModel

    real = GenHancerModel.training_forward
    calls = {"n": 0}

    def poisoned(self, batch, generator):
        out = real(self, batch, generator)
        calls["n"] += 1
        if calls["n"] == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(GenHancerModel, "training_forward", poisoned)


def test_nonfinite_loss_stops_with_the_step_and_saves_nothing_after(
    tmp_path, tiny_enhance_config, monkeypatch
):
    _poison_second_step(monkeypatch)
    cfg = tiny_enhance_config("train.stages=[1]", "stage1.steps=3", "logging.preview_count=0")
    with pytest.raises(UserError, match="step 2"):
        run(cfg, tmp_path)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["stage1_step0000001"]
    assert all(torch.isfinite(v).all() for v in _ckpt_weights(tmp_path).values())


def test_nonfinite_stop_needs_no_per_step_sync_and_still_saves_nothing_bad(
    tmp_path, tiny_enhance_config, monkeypatch
):
    """Logging and checkpointing every 3 steps: the bad step 2 is found at step 3's check (no host
    sync per step), and neither a log line nor a checkpoint covering it is written."""
    _poison_second_step(monkeypatch)
    cfg = tiny_enhance_config(
        "train.stages=[1]",
        "stage1.steps=6",
        "logging.preview_count=0",
        "logging.every=3",
        "checkpoint.every=3",
    )
    with pytest.raises(UserError, match="at step 2; stopped at step 3 before anything after step 1"):
        run(cfg, tmp_path)
    assert ckpt.list_checkpoints(tmp_path / "checkpoints") == []
    assert not (tmp_path / "metrics.jsonl").exists() or _metrics(tmp_path) == []


def test_nonfinite_loss_can_be_skipped_and_counted(tmp_path, tiny_enhance_config, monkeypatch):
    _poison_second_step(monkeypatch)
    cfg = tiny_enhance_config(
        "train.stages=[1]",
        "stage1.steps=3",
        "logging.preview_count=0",
        "train.nonfinite=skip",
        "logging.every=3",
        "checkpoint.every=3",
    )
    run(cfg, tmp_path)
    (record,) = _metrics(tmp_path)
    assert record["nonfinite_steps"] == 1 and record["loss"] == record["loss"]  # finite, not NaN
    assert all(torch.isfinite(v).all() for v in _ckpt_weights(tmp_path).values())


def test_a_run_folder_in_the_old_config_shape_resumes(tmp_path, tiny_enhance_config):
    """A run whose ``config.yaml`` was written before the method sections (GenHancer's settings in
    top-level ``denoiser``/``vae``/``flow``/``projector``, the frozen-SD methods' sections beside
    them at their defaults) resumes, and still refuses a real change."""
    import yaml

    from genhancer.runtime import configtools

    common = ("stage1.steps=2", "stage2.steps=2", "logging.preview_count=0", "checkpoint.keep_last=20")
    run(tiny_enhance_config(*common, "train.stages=[1]"), tmp_path)
    tree = yaml.safe_load((tmp_path / "config.yaml").read_text())
    section = tree.pop("method")
    tree["method"] = {"name": "genhancer"}
    for key in ("denoiser", "vae", "flow", "projector"):
        tree[key] = section[key]
    tree["sd"] = {"path": "stabilityai/stable-diffusion-2-1-base", "target": "epsilon"}
    tree["dcr"] = {"temperature": 0.1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    run(tiny_enhance_config(*common, "train.stages=[2]"), tmp_path, resume=True)
    assert (tmp_path / "checkpoints" / "stage2_step0000002").is_dir()
    changed = tiny_enhance_config(*common, "train.stages=[2]", "stage2.steps=3", "method.flow.scale=2.0")
    assert configtools.to_dict(changed)["method"]["flow"]["scale"] == 2.0
    with pytest.raises(UserError, match="method.flow.scale"):
        run(changed, tmp_path, resume=True)
