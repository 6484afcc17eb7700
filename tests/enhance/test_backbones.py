"""Vision backbones: the global/local tokens each family conditions on, loading errors, LoRA on the
image side only, merging, and the exports downstream tools load (the export contract)."""

from __future__ import annotations

import json
import types

import pytest
import torch
from safetensors.torch import load_file

from enhance.backbones import build_backbone, list_backbones
from enhance.backbones.hf import HFCLIPBackbone, HFSiglipBackbone, load_hf_backbone
from enhance.backbones.openclip import OpenCLIPBackbone, load_open_clip_backbone
from enhance.stages import add_lora, configure_stage, has_lora, merge_lora
from genhancer.runtime.errors import UserError

SIZE = 32
N_PATCHES = (SIZE // 8) ** 2
HF_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@pytest.fixture()
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _perturb_lora(module: torch.nn.Module, seed: int = 0) -> int:
    """lora_B starts at zero (LoRA is then a no-op); give it values so LoRA changes the output."""
    gen = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
                n += 1
    return n


def _lora_modules(module: torch.nn.Module) -> list[str]:
    return sorted(
        name
        for name, m in module.named_modules()
        if any(n.startswith("lora_A") for n, _ in m.named_children())
    )


# --- HF CLIP ------------------------------------------------------------------------------------


def test_clip_global_token_is_projected_pooler_output(tiny_clip_backbone, tmp_model_dirs, pixels):
    from transformers import CLIPModel

    bb = tiny_clip_backbone
    assert isinstance(bb, HFCLIPBackbone) and bb.family == "openai-clip"
    assert (bb.global_dim, bb.local_dim, bb.image_size) == (24, 32, SIZE)
    assert bb.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # from the processor

    ref = CLIPModel.from_pretrained(tmp_model_dirs.clip).eval()  # an independent copy
    with torch.no_grad():
        out = bb(pixels)
        vis = ref.vision_model(pixel_values=pixels)
        expected = ref.visual_projection(vis.pooler_output)
        ids = torch.tensor([[ref.config.text_config.bos_token_id, ref.config.text_config.eos_token_id]] * 2)
        full = ref(input_ids=ids, pixel_values=pixels)
    assert out.global_token.shape == (2, 24)
    assert torch.allclose(out.global_token, expected, atol=1e-6)
    # ... which is what CLIP scores images with (image_embeds = normalised projected pooler output)
    assert torch.allclose(
        out.global_token / out.global_token.norm(dim=-1, keepdim=True), full.image_embeds, atol=1e-5
    )
    # local tokens: the patch tokens, CLS dropped
    assert out.local_tokens.shape == (2, N_PATCHES, 32)
    assert torch.allclose(out.local_tokens, vis.last_hidden_state[:, 1:], atol=1e-6)


def test_build_backbone_from_config(tiny_cfg, pixels):
    bb = build_backbone(tiny_cfg.backbone, tiny_cfg.cache_dir)
    assert isinstance(bb, HFCLIPBackbone)
    tiny_cfg.backbone.family = "metaclip"  # same loader, family recorded
    assert build_backbone(tiny_cfg.backbone).family == "metaclip"
    tiny_cfg.backbone.family = "dinov2"
    with pytest.raises(UserError, match="open_clip"):
        build_backbone(tiny_cfg.backbone)
    assert list_backbones() == ["metaclip", "open_clip", "openai-clip", "siglip"]


def test_image_size_mismatch_names_both_sizes(tmp_model_dirs):
    with pytest.raises(UserError) as exc:
        load_hf_backbone("openai-clip", str(tmp_model_dirs.clip), 64)
    assert "64" in str(exc.value) and "32" in str(exc.value)


@pytest.mark.parametrize("family", ["openai-clip", "siglip"])
def test_missing_path_is_a_user_error_naming_it(tmp_path, family):
    missing = tmp_path / "no-such-model"
    with pytest.raises(UserError, match="no-such-model") as exc:
        load_hf_backbone(family, str(missing), SIZE)
    assert "backbone.name_or_path" in str(exc.value)
    assert "\n" not in str(exc.value)  # one line for the CLI


@pytest.mark.parametrize("family, other", [("openai-clip", "siglip"), ("siglip", "clip")])
def test_family_that_does_not_match_the_checkpoint_is_a_user_error(tmp_model_dirs, family, other):
    path = tmp_model_dirs.siglip if other == "siglip" else tmp_model_dirs.clip
    with pytest.raises(UserError, match=other):
        load_hf_backbone(family, str(path), SIZE)


# --- SigLIP -------------------------------------------------------------------------------------


def test_siglip_global_token_is_pooler_output(tmp_model_dirs, pixels):
    from transformers import SiglipModel

    bb = load_hf_backbone("siglip", str(tmp_model_dirs.siglip), SIZE)
    assert isinstance(bb, HFSiglipBackbone) and bb.family == "siglip"
    assert (bb.global_dim, bb.local_dim) == (32, 32)
    assert bb.image_mean == pytest.approx((0.5, 0.5, 0.5))
    ref = SiglipModel.from_pretrained(tmp_model_dirs.siglip).eval()
    with torch.no_grad():
        out = bb(pixels)
        vis = ref.vision_model(pixel_values=pixels)
    assert torch.allclose(out.global_token, vis.pooler_output, atol=1e-6)
    assert out.local_tokens.shape == (2, N_PATCHES, 32)  # SigLIP has no CLS token
    assert torch.allclose(out.local_tokens, vis.last_hidden_state, atol=1e-6)
    with pytest.raises(UserError, match="64"):
        load_hf_backbone("siglip", str(tmp_model_dirs.siglip), 64)


def test_siglip_lora_merge_and_export_tower(tmp_model_dirs, tiny_cfg, tmp_path, pixels):
    from transformers import AutoModel, SiglipVisionModel

    bb = load_hf_backbone("siglip", str(tmp_model_dirs.siglip), SIZE)
    holder = types.SimpleNamespace(backbone=bb)  # add_lora only needs .backbone
    add_lora(holder, tiny_cfg)
    adapted = _lora_modules(bb.model)
    assert not any("text_model" in n for n in adapted)
    encoder = {f"base_model.model.vision_model.encoder.layers.0.self_attn.{t}" for t in HF_TARGETS[:4]}
    encoder |= {f"base_model.model.vision_model.encoder.layers.0.mlp.{t}" for t in ("fc1", "fc2")}
    head = {f"base_model.model.vision_model.head.mlp.{t}" for t in ("fc1", "fc2")}
    # all-linear (default): the pooling head's MultiheadAttention is adapted as a whole (peft also
    # wraps its out_proj inside it), since it calls out_proj's weight functionally
    attention = {
        "base_model.model.vision_model.head.attention",
        "base_model.model.vision_model.head.attention.base_layer.out_proj",
    }
    assert set(adapted) == encoder | head | attention
    _perturb_lora(bb)
    bb.eval()
    with torch.no_grad():
        with_lora = bb(pixels).global_token
    merge_lora(holder)

    written = bb.export(tmp_path)
    assert set(written) == {"hf", "vision_tower"}
    keys = list(load_file(tmp_path / "vision_tower" / "model.safetensors"))
    assert keys and all(k.startswith("vision_model.") for k in keys)
    tower = SiglipVisionModel.from_pretrained(tmp_path / "vision_tower").eval()
    whole = AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(whole).__name__ == "SiglipModel"
    with torch.no_grad():
        assert torch.allclose(tower(pixel_values=pixels).pooler_output, with_lora, atol=1e-5)
        assert torch.allclose(whole.vision_model(pixel_values=pixels).pooler_output, with_lora, atol=1e-5)


# --- LoRA (stage 2) -------------------------------------------------------------------------------


def _encoder_linears(model) -> set[str]:
    layers = model.backbone.model.config.vision_config.num_hidden_layers
    return {
        f"base_model.model.vision_model.encoder.layers.{i}.{'self_attn' if t.endswith('proj') else 'mlp'}.{t}"
        for i in range(layers)
        for t in HF_TARGETS
    }


def test_lora_adapts_every_vision_linear_and_nothing_else(tiny_genhancer_model, tiny_cfg):
    model = tiny_genhancer_model
    assert not has_lora(model)
    add_lora(model, tiny_cfg)
    assert has_lora(model)
    adapted = _lora_modules(model.backbone.model)
    assert not any("text" in n for n in adapted)
    # default lora_targets=all-linear (the official code): the encoder blocks and visual_projection
    assert set(adapted) == _encoder_linears(model) | {"base_model.model.visual_projection"}
    # the adapter hyper-parameters are the configured ones (paper: r 16, alpha 16, dropout 0.1)
    peft_cfg = model.backbone.model.peft_config["default"]
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.lora_dropout) == (16, 16, 0.1)


def test_lora_targets_encoder_leaves_visual_projection_alone(tiny_genhancer_model, tiny_enhance_config):
    cfg = tiny_enhance_config("stage2.lora_targets=encoder")
    add_lora(tiny_genhancer_model, cfg)
    assert set(_lora_modules(tiny_genhancer_model.backbone.model)) == _encoder_linears(tiny_genhancer_model)


def test_lora_target_modules_can_be_narrowed(tiny_genhancer_model, tiny_enhance_config):
    cfg = tiny_enhance_config("stage2.lora_target_modules=[q_proj, v_proj]", "stage2.lora_r=2")
    add_lora(tiny_genhancer_model, cfg)
    adapted = _lora_modules(tiny_genhancer_model.backbone.model)
    assert len(adapted) == 2 * 2 and all(n.endswith(("q_proj", "v_proj")) for n in adapted)


def test_stage2_step_changes_only_lora_projector_and_denoiser(tiny_genhancer_model, tiny_cfg, tiny_pixels):
    model = tiny_genhancer_model
    params = configure_stage(model, 2, tiny_cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if n in trainable}
    # default lora_bias=lora_only: besides LoRA, the biases of the adapted layers train
    assert all("lora_" in n or n.endswith(".base_layer.bias") for n in trainable if n.startswith("backbone."))
    assert not any(n.startswith("codec.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    loss = model.training_forward(tiny_pixels, torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable  # frozen: the base tower (text and vision) and the VAE
    assert any("lora_B" in n for n in changed)
    assert any(n.startswith("projector.") for n in changed) and any(
        n.startswith("denoiser.") for n in changed
    )

    tiny_cfg.stage2.variant = "stage2_only"
    tiny_cfg.stage2.lora_bias = "none"
    params = configure_stage(model, 2, tiny_cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)


def test_merge_lora_keeps_the_global_token(tiny_genhancer_model, tiny_cfg, pixels):
    model = tiny_genhancer_model
    with torch.no_grad():
        base = model.backbone(pixels).global_token
    add_lora(model, tiny_cfg)
    assert _perturb_lora(model.backbone) > 0
    model.backbone.eval()  # LoRA dropout off
    with torch.no_grad():
        with_lora = model.backbone(pixels).global_token
    assert (with_lora - base).abs().max() > 1e-3  # LoRA is not a no-op
    merge_lora(model)
    assert not has_lora(model) and type(model.backbone.model).__name__ == "CLIPModel"
    with torch.no_grad():
        merged = model.backbone(pixels).global_token
    assert torch.allclose(merged, with_lora, atol=1e-5)
    merge_lora(model)  # idempotent without LoRA


def test_export_loads_with_auto_classes_and_clip_vision_model(
    tiny_genhancer_model, tiny_cfg, tmp_path, pixels
):
    from diffusers import FluxTransformer2DModel
    from transformers import AutoModel, AutoProcessor, CLIPImageProcessor, CLIPVisionModel

    from enhance.export import export_model
    from enhance.projector import ConditionProjector

    model = tiny_genhancer_model
    add_lora(model, tiny_cfg)
    _perturb_lora(model.backbone)
    model.eval()
    with torch.no_grad():
        with_lora = model.backbone(pixels).global_token
    out = tmp_path / "export"
    written = export_model(model, tiny_cfg, out)
    assert set(written) == {"hf", "vision_tower", "denoiser"}
    assert not (tmp_path / "export.tmp").exists()
    assert not has_lora(model)
    with torch.no_grad():
        merged_pooler = model.backbone.model.vision_model(pixel_values=pixels).pooler_output

    whole = AutoModel.from_pretrained(out / "hf").eval()
    processor = AutoProcessor.from_pretrained(out / "hf")
    assert type(whole).__name__ == "CLIPModel"
    assert processor.image_processor.crop_size == {"height": SIZE, "width": SIZE}
    assert processor.tokenizer("a red square").input_ids[-1] == processor.tokenizer.eos_token_id
    with torch.no_grad():
        exported = whole.visual_projection(whole.vision_model(pixel_values=pixels).pooler_output)
    assert torch.allclose(exported, with_lora, atol=1e-5)  # the LoRA was merged, not dropped

    tower_dir = out / "vision_tower"
    keys = list(load_file(tower_dir / "model.safetensors"))
    assert keys and all(k.startswith("vision_model.") for k in keys)
    tower = CLIPVisionModel.from_pretrained(tower_dir).eval()
    assert CLIPImageProcessor.from_pretrained(tower_dir).crop_size == {"height": SIZE, "width": SIZE}
    with torch.no_grad():
        pooled = tower(pixel_values=pixels).pooler_output
    assert torch.allclose(pooled, merged_pooler, atol=1e-6)

    den = out / "denoiser"
    meta = json.loads((den / "genhancer.json").read_text())
    mc = meta["method_config"]
    assert meta["format"] == 2 and meta["method"] == "genhancer"
    assert mc["denoiser"]["axes_dims_rope"] == [4, 6, 6] and mc["vae"]["latent_channels"] == 16
    proj = ConditionProjector.from_pretrained(den / "projector")
    for (k, a), b in zip(model.projector.state_dict().items(), proj.state_dict().values()):
        assert torch.equal(a, b), k
    flux = FluxTransformer2DModel.from_pretrained(den / "transformer")
    assert sum(p.numel() for p in flux.parameters()) == sum(p.numel() for p in model.denoiser.parameters())


# --- open_clip ------------------------------------------------------------------------------------


@pytest.fixture()
def oc_backbone(tmp_model_dirs) -> OpenCLIPBackbone:
    torch.manual_seed(0)
    return load_open_clip_backbone(str(tmp_model_dirs.open_clip_json), "", SIZE)


def test_open_clip_tokens(oc_backbone, pixels):
    bb = oc_backbone
    assert (bb.family, bb.model_name) == ("open_clip", "genhancer-test-openclip")
    assert (bb.global_dim, bb.local_dim) == (16, 32)
    with torch.no_grad():
        out = bb(pixels)
        expected = bb.model.encode_image(pixels)  # returns (pooled, tokens) once output_tokens is on
    expected = expected[0] if isinstance(expected, tuple) else expected
    assert out.global_token.shape == (2, 16) and out.local_tokens.shape == (2, N_PATCHES, 32)
    assert torch.allclose(out.global_token, expected, atol=1e-6)


def test_open_clip_model_keeps_its_own_api(oc_backbone, pixels):
    bb = oc_backbone
    text = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = bb.model.encode_image(pixels, normalize=True)
        out = bb.model(pixels, text)
        token = bb(pixels).global_token
    image_features = out["image_features"] if isinstance(out, dict) else out[0]
    assert torch.allclose(feats, token / token.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(image_features, feats, atol=1e-6)


def test_open_clip_loading_errors(tmp_model_dirs, tmp_path):
    with pytest.raises(UserError, match="64") as exc:
        load_open_clip_backbone(str(tmp_model_dirs.open_clip_json), "", 64)
    assert "32" in str(exc.value)
    with pytest.raises(UserError, match="not found"):
        load_open_clip_backbone(str(tmp_path / "missing.json"), "", SIZE)
    with pytest.raises(UserError, match="unknown open_clip model"):
        load_open_clip_backbone("no-such-arch", "", SIZE)
    with pytest.raises(UserError, match="neither a file nor a known tag"):
        load_open_clip_backbone(str(tmp_model_dirs.open_clip_json), "nope-tag", SIZE)


def test_open_clip_lora_merge_and_export(oc_backbone, tiny_cfg, tmp_model_dirs, tmp_path, pixels):
    import open_clip

    bb = oc_backbone
    holder = types.SimpleNamespace(backbone=bb)  # add_lora only needs .backbone
    add_lora(holder, tiny_cfg)
    adapted = _lora_modules(bb.model)
    assert adapted and all(".visual.transformer.resblocks." in n for n in adapted)  # never the text tower
    for i in range(2):
        block = f"base_model.model.visual.transformer.resblocks.{i}"
        assert {f"{block}.attn", f"{block}.mlp.c_fc", f"{block}.mlp.c_proj"} <= set(adapted)
    with torch.no_grad():
        base = bb(pixels).global_token
    _perturb_lora(bb)
    bb.eval()
    with torch.no_grad():
        with_lora = bb(pixels).global_token
    assert (with_lora - base).abs().max() > 1e-3
    merge_lora(holder)
    assert not has_lora(holder)
    with torch.no_grad():
        merged = bb(pixels).global_token
    assert torch.allclose(merged, with_lora, atol=1e-5)

    written = bb.export(tmp_path)
    target = tmp_path / "open_clip"
    assert written == {"open_clip": str(target)}
    meta = json.loads((target / "open_clip_config.json").read_text())
    assert meta["model_name"] == "genhancer-test-openclip"
    assert meta["model_cfg"] == json.loads(tmp_model_dirs.open_clip_json.read_text())
    fresh = open_clip.create_model(meta["model_name"]).eval()
    fresh.load_state_dict(load_file(target / "open_clip_model.safetensors"))  # strict: same keys
    with torch.no_grad():
        assert torch.allclose(fresh.encode_image(pixels), merged, atol=1e-6)
