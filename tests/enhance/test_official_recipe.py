"""The paper's schedule and the official code's training details: LoRA targets and bias mode,
trained biases merged into every export, per-step exports for checkpoint selection, the
replicated-stream option and the one-epoch schedule."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from enhance.cli import describe
from enhance.config import load_config
from enhance.export import export_model, list_step_exports, prune_step_exports
from enhance.stages import (
    checkpoint_state,
    configure_stage,
    load_checkpoint_state,
    tower_bias_names,
    trainable_counts,
)
from genhancer.runtime import checkpoint as ckpt

SIZE = 32


@pytest.fixture()
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _perturb(model, seed: int = 0) -> None:
    """Give LoRA B and the trainable tower biases values, so neither is a no-op."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name or (p.requires_grad and name.endswith("bias")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)


# --- schedule and --describe ---------------------------------------------------------------------


def test_paper_preset_describe_shows_schedule_lora_and_trained_counts():
    out = describe(load_config("openai-clip-l14-224"))
    sched = out["schedule"]
    assert (sched["stage1"]["steps"], sched["stage2"]["steps"]) == (100_000, 5_000)
    assert sched["stage1"]["global_batch_size"] == sched["stage2"]["global_batch_size"] == 256
    assert sched["stage2"]["export_every"] == 500
    lora = out["lora"]
    assert (lora["targets"], lora["bias"], lora["text_tower"]) == ("all-linear", "lora_only", "frozen")
    assert lora["adapted_outside_encoder_blocks"] == ["visual_projection"]
    assert lora["adapted_layers"] == 24 * 6 + 1
    # by hand, ViT-L/14 (width 1024, MLP 4096, 24 blocks), r = 16, projection 1024 -> 768:
    per_block = 4 * 16 * (1024 + 1024) + 16 * (1024 + 4096) + 16 * (4096 + 1024)
    assert out["parameters"]["lora"] == 24 * per_block + 16 * (1024 + 768)
    assert out["parameters"]["tower_bias"] == 24 * (4 * 1024 + 4096 + 1024)  # visual_projection has none
    assert "replication only" in out["replication_only"]["data.replicate_across_ranks"]["note"]


def test_describe_follows_the_lora_switches():
    cfg = load_config(
        "openai-clip-l14-224", overrides=["stage2.lora_targets=encoder", "stage2.lora_bias=none"]
    )
    out = describe(cfg)
    assert out["lora"]["adapted_outside_encoder_blocks"] == []
    per_block = 4 * 16 * (1024 + 1024) + 16 * (1024 + 4096) + 16 * (4096 + 1024)
    assert (out["parameters"]["lora"], out["parameters"]["tower_bias"]) == (24 * per_block, 0)
    siglip = describe(load_config("siglip-so400m-224"))
    assert "head.attention" in " ".join(siglip["lora"]["adapted_outside_encoder_blocks"])
    one_epoch = describe(load_config("openai-clip-l14-224", overrides=["train.schedule=one_epoch"]))
    assert "one pass" in one_epoch["schedule"]["stage1"]["steps"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("stage2.lora_bias", "some"), ("stage2.lora_targets", "everything"), ("train.schedule", "epochs")],
)
def test_bad_choices_name_the_key(key, value):
    from genhancer.runtime.errors import UserError

    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config("tiny", overrides=[f"{key}={value}"])


def test_one_epoch_schedule_counts_the_data(tiny_enhance_config):
    from enhance.data.loading import build_source
    from enhance.train import resolve_schedule

    cfg = tiny_enhance_config("train.schedule=one_epoch")  # 64 toy images, global batch 4
    source = build_source("toyworld", "", toy_n=64)
    resolve_schedule(cfg, source, world=1)
    assert (cfg.stage1.steps, cfg.stage2.steps) == (16, 16)
    cfg = tiny_enhance_config("train.schedule=one_epoch", "data.replicate_across_ranks=true")
    resolve_schedule(cfg, source, world=2)  # 2 distinct images per step when ranks share a stream
    assert cfg.stage1.steps == 32
    cfg = tiny_enhance_config()
    resolve_schedule(cfg, source, world=1)
    assert cfg.stage1.steps == 2  # train.schedule=steps keeps the configured lengths


# --- LoRA targets and bias mode -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "lora_only", "all"])
def test_bias_modes_train_only_image_side_biases(tiny_genhancer_model, tiny_enhance_config, mode):
    model = tiny_genhancer_model
    configure_stage(model, 2, tiny_enhance_config(f"stage2.lora_bias={mode}"))
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    biases = {n for n in trainable if "lora_" not in n}
    assert not any("text_model" in n or "text_projection" in n for n in trainable)
    if mode == "none":
        assert biases == set()
    elif mode == "lora_only":
        assert biases and all(n.endswith(".base_layer.bias") for n in biases)
        assert not any("layer_norm" in n or "embeddings" in n for n in biases)
    else:
        assert any("layer_norm" in n for n in biases)  # every image-side bias, not only adapted layers
        assert {n for n in biases if n.endswith(".base_layer.bias")} == set(
            tower_bias_names(model.backbone, "lora_only")
        )
    counts = trainable_counts(model)
    assert counts["tower_bias"] == sum(p.numel() for n, p in model.backbone.named_parameters() if n in biases)


def test_stage2_step_moves_lora_and_adapted_biases_never_the_text_tower(
    tiny_genhancer_model, tiny_cfg, tiny_pixels
):
    model = tiny_genhancer_model
    params = configure_stage(model, 2, tiny_cfg)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for seed in range(2):  # lora_B starts at 0, so A moves only from the second step
        model.training_forward(tiny_pixels, torch.Generator().manual_seed(seed))["loss"].backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.endswith("visual_projection.lora_A.default.weight") for n in changed)
    assert any(n.endswith("q_proj.base_layer.bias") for n in changed)
    assert not any("text_model" in n or "text_projection" in n for n in changed)
    assert not any(n.endswith("base_layer.weight") for n in changed)  # base weights stay frozen
    assert not any("layer_norm" in n for n in changed)  # lora_only: not every bias


def test_checkpoint_holds_and_restores_trained_biases(tiny_genhancer_model, tiny_cfg, tiny_enhance_config):
    from enhance.train import build_model

    model = tiny_genhancer_model
    configure_stage(model, 2, tiny_cfg)
    _perturb(model)
    state = checkpoint_state(model)
    bias_keys = [k for k in state if k.endswith("base_layer.bias")]
    assert bias_keys and set(bias_keys) == set(model.trained_tower_biases)

    fresh = build_model(tiny_enhance_config())
    configure_stage(fresh, 2, tiny_cfg)
    assert not all(torch.equal(fresh.state_dict()[k], state[k]) for k in bias_keys)
    load_checkpoint_state(fresh, state)
    for k in bias_keys:
        assert torch.equal(fresh.state_dict()[k], state[k]), k


def test_export_merges_adapters_and_trained_biases(tiny_genhancer_model, tiny_cfg, tmp_path, pixels):
    """The merged tower (export/hf and export/vision_tower) equals the adapted one, visual_projection
    LoRA and the trained biases included."""
    from transformers import CLIPModel, CLIPVisionModel

    model = tiny_genhancer_model
    with torch.no_grad():
        base = model.backbone(pixels).global_token
    configure_stage(model, 2, tiny_cfg)
    _perturb(model)
    model.eval()
    with torch.no_grad():
        adapted = model.backbone(pixels).global_token
        pooled = model.backbone.model.base_model.model.vision_model(pixel_values=pixels).pooler_output
    assert (adapted - base).abs().max() > 1e-3
    export_model(model, tiny_cfg, tmp_path / "export", stage2_step=2)
    whole = CLIPModel.from_pretrained(tmp_path / "export" / "hf").eval()
    tower = CLIPVisionModel.from_pretrained(tmp_path / "export" / "vision_tower").eval()
    with torch.no_grad():
        merged = whole.visual_projection(whole.vision_model(pixel_values=pixels).pooler_output)
        assert torch.allclose(merged, adapted, atol=1e-5)
        assert torch.allclose(tower(pixel_values=pixels).pooler_output, pooled, atol=1e-5)

    # the trained bias itself is in the export, not the base model's
    exported = load_file(tmp_path / "export" / "hf" / "model.safetensors")
    key = "vision_model.encoder.layers.0.self_attn.q_proj.bias"
    original = CLIPModel.from_pretrained(tiny_cfg.backbone.name_or_path)
    assert not torch.equal(exported[key], original.state_dict()[key])


# --- per-step exports ---------------------------------------------------------------------------


def test_per_step_exports_load_and_the_last_equals_the_final_export(tmp_path, tiny_enhance_config, pixels):
    from transformers import AutoModel, CLIPVisionModel

    from enhance.train import run

    cfg = tiny_enhance_config("stage2.steps=4", "stage2.export_every=2", "stage2.export_keep=0")
    run(cfg, tmp_path)
    steps_dir = tmp_path / "export" / "steps"
    assert [s for s, _ in list_step_exports(steps_dir)] == [2, 4]
    for step in (2, 4):
        folder = steps_dir / str(step)
        # the tiny preset's stage2.export_denoiser=true adds denoiser/ (the demo's per-step reconstructions)
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["denoiser", "genhancer_export.json", "hf", "vision_tower"]
        meta = json.loads((folder / "genhancer_export.json").read_text())
        assert (meta["stage2_step"], meta["lora_targets"], meta["lora_bias"]) == (
            step,
            "all-linear",
            "lora_only",
        )
        AutoModel.from_pretrained(folder / "hf")
        CLIPVisionModel.from_pretrained(folder / "vision_tower")
    final = load_file(tmp_path / "export" / "hf" / "model.safetensors")
    last = load_file(steps_dir / "4" / "hf" / "model.safetensors")
    mid = load_file(steps_dir / "2" / "hf" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    key = "visual_projection.weight"  # adapted by LoRA: moves between step 2 and 4
    assert not torch.equal(mid[key], last[key])
    meta = json.loads((tmp_path / "export" / "genhancer_export.json").read_text())
    assert (meta["stage2_step"], meta["final"]) == (4, True)
    # training was not disturbed by the exports: same checkpoint as a run without them
    other = tmp_path / "no_exports"
    run(tiny_enhance_config("stage2.steps=4", "stage2.export_every=0"), other)
    a = ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    b = ckpt.load_weights(ckpt.latest_checkpoint(other / "checkpoints"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (other / "export" / "steps").exists()


def test_export_keep_bounds_disk_and_bf16_exports_are_bf16(tmp_path, tiny_enhance_config):
    from transformers import CLIPModel

    from enhance.train import run

    cfg = tiny_enhance_config(
        "stage2.steps=3", "stage2.export_every=1", "stage2.export_keep=2", "stage2.export_dtype=bfloat16"
    )
    run(cfg, tmp_path)
    assert [s for s, _ in list_step_exports(tmp_path / "export" / "steps")] == [2, 3]
    for f in [
        tmp_path / "export" / "steps" / "3" / "hf" / "model.safetensors",
        tmp_path / "export" / "steps" / "3" / "vision_tower" / "model.safetensors",
        tmp_path / "export" / "hf" / "model.safetensors",
    ]:
        with safe_open(f, "pt") as fh:
            dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
        assert "F32" not in dtypes and "BF16" in dtypes, f
    assert CLIPModel.from_pretrained(tmp_path / "export" / "steps" / "3" / "hf").dtype == torch.bfloat16


def test_prune_keeps_the_newest_and_the_final_export_keeps_steps(tmp_path, tiny_genhancer_model, tiny_cfg):
    steps = tmp_path / "export" / "steps"
    for s in (5, 10, 100, 20):
        (steps / str(s)).mkdir(parents=True)
    (steps / ".30.tmp").mkdir()  # an unfinished export is not counted
    removed = prune_step_exports(steps, keep=2)
    assert sorted(p.name for p in removed) == ["10", "5"]
    assert [s for s, _ in list_step_exports(steps)] == [20, 100]
    assert prune_step_exports(steps, keep=0) == []
    export_model(tiny_genhancer_model, tiny_cfg, tmp_path / "export")  # replaces export/, keeps steps/
    assert [s for s, _ in list_step_exports(steps)] == [20, 100]
    assert (tmp_path / "export" / "hf").is_dir() and not (tmp_path / "export.tmp").exists()


def test_steps_left_in_export_tmp_by_a_crash_are_put_back(tmp_path, tiny_genhancer_model, tiny_cfg):
    (tmp_path / "export.tmp" / "steps" / "7").mkdir(parents=True)  # crashed after moving steps/
    export_model(tiny_genhancer_model, tiny_cfg, tmp_path / "export")
    assert [s for s, _ in list_step_exports(tmp_path / "export" / "steps")] == [7]


# --- replicated data stream (replication only) --------------------------------------------------


def _first_batch(cfg, model, source, rank: int, world: int) -> dict:
    from enhance.train import build_stream_factory

    factory = build_stream_factory(cfg, model, source, 2, rank, world, 4, False)
    return next(factory(0))


def test_replicated_stream_same_images_per_rank_different_crops(tiny_genhancer_model, tiny_enhance_config):
    from enhance.data.loading import build_source

    model = tiny_genhancer_model
    source = build_source("toyworld", "", toy_n=64, toy_image_size=SIZE)
    split = tiny_enhance_config("data.crop_scale=[0.3, 1.0]")
    shared = tiny_enhance_config("data.crop_scale=[0.3, 1.0]", "data.replicate_across_ranks=true")

    a0, a1 = _first_batch(split, model, source, 0, 2), _first_batch(split, model, source, 1, 2)
    assert not set(a0["key"]) & set(a1["key"])  # default: each rank its own images

    r0, r1 = _first_batch(shared, model, source, 0, 2), _first_batch(shared, model, source, 1, 2)
    alone = _first_batch(shared, model, source, 0, 1)
    assert list(r0["key"]) == list(r1["key"]) == list(alone["key"])  # one stream for every rank
    assert not torch.equal(r0["pixel_values"], r1["pixel_values"])  # crops drawn per rank
    assert torch.equal(r0["pixel_values"], alone["pixel_values"])  # rank 0 crops as one process
