"""Model assembly: save/load round trip, presets on the meta device, projector hand-over, tower swap."""

from __future__ import annotations

import pytest
import torch

from genhancer.runtime.errors import UserError
from llava_integration import model as M
from llava_integration.config import PRESETS_DIR, load_config
from llava_integration.templates import IMAGE_TOKEN


def test_assembly_is_a_stock_llava(tiny_llava):
    model, proc = tiny_llava
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(proc, LlavaProcessor)
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"  # CLIP: CLS dropped
    assert model.config.projector_hidden_act == "gelu"
    assert proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
    assert model.get_input_embeddings().num_embeddings == len(proc.tokenizer)
    assert proc.image_processor.do_pad


def test_save_load_round_trip(tiny_llava, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model, proc = tiny_llava
    with torch.no_grad():  # perturb so a silently re-initialised load cannot pass
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    M.save(model, proc, tmp_path / "final")
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "final")
    proc2 = AutoProcessor.from_pretrained(tmp_path / "final")
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert "USER:" in proc2.chat_template and "ASSISTANT:" in proc2.chat_template
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}]
    prompt = proc2.apply_chat_template(msgs, add_generation_prompt=True)
    inputs = proc2(images=[Image.new("RGB", (40, 24), "red")], text=[prompt], return_tensors="pt")
    assert (inputs["input_ids"] == loaded.config.image_token_id).sum() == M.num_image_tokens(loaded.config)
    with torch.no_grad():
        out = loaded(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape


@pytest.mark.parametrize(
    "preset, total, hidden",
    [("llava15-7b", 7.06e9, 4096), ("llava15-7b-lora", 7.06e9, 4096), ("llava15-13b", 13.35e9, 5120)],
)
def test_paper_presets_build_on_meta(preset, total, hidden):
    cfg = load_config(preset)
    counts = M.parameter_counts(M.build_meta(cfg.model))
    assert counts["total"] == pytest.approx(total, rel=0.01)
    assert counts["projector"] == 1024 * hidden + hidden + hidden * hidden + hidden  # mlp2x_gelu
    assert (
        cfg.pretrain.lr == 1e-3 and cfg.pretrain.global_batch_size == 256 and cfg.pretrain.template == "plain"
    )
    assert cfg.pretrain.warmup_ratio == 0.03 and cfg.pretrain.trainable == "projector"
    assert cfg.finetune.global_batch_size == 128 and cfg.finetune.template == "vicuna_v1"
    assert cfg.data.max_length == 2048
    # LLaVA-1.5's pretrain.sh has no --image_aspect_ratio (resize + centre crop); finetune.sh pads
    assert (cfg.pretrain.image_aspect_ratio, cfg.finetune.image_aspect_ratio) == ("crop", "pad")
    assert cfg.finetune.per_device_batch_size == 16  # finetune defaults hold when a preset sets other keys
    if preset.endswith("lora"):
        f = cfg.finetune
        assert (f.trainable, f.lora_r, f.lora_alpha, f.lr, f.projector_lr) == ("lora", 128, 256, 2e-4, 2e-5)
    else:
        assert cfg.finetune.trainable == "full" and cfg.finetune.lr == 2e-5


def test_every_preset_resolves():
    from genhancer.runtime.configtools import list_presets

    names = list_presets(PRESETS_DIR)
    assert {"tiny", "llava15-7b", "llava15-7b-lora", "llava15-13b"} <= set(names)
    for name in names:
        load_config(name)


def test_projector_hand_over_and_mismatch(tiny_llava, tiny_model_cfg, tiny_dirs, tmp_path):
    import dataclasses

    model, _ = tiny_llava
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.weight.fill_(0.5)
    M.save_projector(model, tmp_path / "pretrain", "t")
    cfg = dataclasses.replace(tiny_model_cfg, pretrained_projector=str(tmp_path / "pretrain"))
    again, _ = M.build(cfg)
    assert torch.equal(
        again.model.multi_modal_projector.linear_1.weight, model.model.multi_modal_projector.linear_1.weight
    )
    wide = dataclasses.replace(cfg, vision_tower=str(tiny_dirs["tower_wide"]))
    with pytest.raises(UserError, match="vision_hidden_size 32 vs 48"):
        M.build(wide)
    with pytest.raises(UserError, match="no projector.safetensors"):
        M.load_projector(model, tmp_path)


def test_swap_tower(tiny_llava, tiny_dirs, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model, proc = tiny_llava
    M.save(model, proc, tmp_path / "final")
    out = M.swap_tower(tmp_path / "final", str(tiny_dirs["tower_alt"]), tmp_path / "swapped")
    swapped = LlavaForConditionalGeneration.from_pretrained(out)
    alt = M.load_tower(str(tiny_dirs["tower_alt"])).model.state_dict()
    for k, v in swapped.model.vision_tower.state_dict().items():
        assert torch.equal(v, alt[k])
    assert torch.equal(swapped.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize(
    "which, message", [("tower_wide", "hidden size 48 vs 32"), ("tower_grid", "patch grid 6x6 vs 4x4")]
)
def test_swap_refuses_a_mismatched_tower(tiny_llava, tiny_dirs, tmp_path, which, message):
    model, proc = tiny_llava
    M.save(model, proc, tmp_path / "final")
    with pytest.raises(UserError, match=message):
        M.swap_tower(tmp_path / "final", str(tiny_dirs[which]), tmp_path / "swapped")


def test_bad_tower_and_llm_paths(tmp_path, tiny_model_cfg):
    import dataclasses

    with pytest.raises(UserError, match="cannot load a vision tower"):
        M.load_tower(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="tokenizer"):
        M.build(dataclasses.replace(tiny_model_cfg, llm=str(tmp_path / "nothing")))
