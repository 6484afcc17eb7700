"""DIVA, DCR and the naive baseline on the shared driver and loop: they train what their plan says,
export towers transformers loads, resume exactly, refuse bad input by name, and the gradient
conflict diagnostic leaves training unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genhancer.runtime.errors import UserError

METHODS = ("dcr", "diva", "naive-contrastive")


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "weights.safetensors"))


def _ckpts(run: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((run / "checkpoints").iterdir()) if (p / "state.json").is_file()}


def _losses(run: Path, key: str = "loss") -> list[float]:
    return [json.loads(x)[key] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_exports_and_names_itself(tmp_path, tiny_method_config, method):
    from transformers import CLIPModel, CLIPVisionModel

    from enhance.train import run

    cfg = tiny_method_config(method)
    out = run(cfg, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    export = tmp_path / "run" / "export"
    assert json.loads((export / "genhancer_export.json").read_text())["method"] == method
    CLIPModel.from_pretrained(export / "hf")
    CLIPVisionModel.from_pretrained(export / "vision_tower")
    assert out["final_loss"] == losses[-1]


def test_dcr_stage2_freezes_the_projector_and_trains_lora(tmp_path, tiny_method_config):
    from enhance.train import run

    run(tiny_method_config("dcr"), tmp_path / "run")
    ck = _ckpts(tmp_path / "run")
    s1 = _weights(ck["stage1_step0000002"])
    s2 = _weights(ck["stage2_step0000002"])
    proj = [k for k in s1 if k.startswith("projector.")]
    assert proj and all(torch.equal(s1[k], s2[k]) for k in proj)
    assert not any(k.startswith("denoiser.") for k in s2)  # the frozen UNet is not checkpointed
    lora_b = [k for k in s2 if "lora_B" in k]
    assert lora_b and any(s2[k].abs().sum() > 0 for k in lora_b)  # B starts at zero, then moves


def test_diva_fine_tunes_the_image_side_only(tmp_path, tiny_method_config, tmp_model_dirs):
    from transformers import CLIPModel

    from enhance.train import run

    run(tiny_method_config("diva"), tmp_path / "run")
    before = CLIPModel.from_pretrained(tmp_model_dirs.clip).state_dict()
    after = CLIPModel.from_pretrained(tmp_path / "run" / "export" / "hf").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("vision_model.") for k in changed)
    assert not any(k.startswith("text_model.") or k.startswith("text_projection") for k in changed)
    assert list(_ckpts(tmp_path / "run")) == ["stage2_step0000001", "stage2_step0000002"]


@pytest.mark.parametrize("method", ["dcr", "diva"])
def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_method_config, method):
    """A crash after stage 2's first checkpoint (its last checkpoint and the export gone): --resume
    restores step 1 and ends with the uninterrupted run's weights and losses."""
    import shutil

    from enhance.train import run

    run(tiny_method_config(method), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "stage2_step0000002")
    shutil.rmtree(tmp_path / "cut" / "export")
    run(tiny_method_config(method), tmp_path / "cut", resume=True)
    a = _weights(_ckpts(tmp_path / "full")["stage2_step0000002"])
    b = _weights(_ckpts(tmp_path / "cut")["stage2_step0000002"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "cut")


def test_grad_conflict_is_logged_and_leaves_training_unchanged(tmp_path, tiny_method_config):
    from enhance.train import run

    run(tiny_method_config("naive-contrastive", "logging.grad_conflict=true"), tmp_path / "on")
    run(tiny_method_config("naive-contrastive", "logging.grad_conflict=false"), tmp_path / "off")
    rows = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    stage2 = [r for r in rows if r["stage"] == "stage2"]
    assert stage2 and all(-1.0 <= r["grad_cos_mse_nce"] <= 1.0 for r in stage2)
    assert all(r["grad_norm_nce"] > 0 for r in stage2)  # the tower trains in stage 2
    assert _losses(tmp_path / "on") == _losses(tmp_path / "off")
    assert (tmp_path / "on" / "grad_conflict.png").is_file()


# --- bad input ----------------------------------------------------------------------------------


def _main(*argv: str) -> int:
    from enhance.cli import main

    return main(list(argv))


def test_unknown_method_exits_2(capsys):
    assert _main("--method", "vae-gan", "--preset", "tiny", "--describe") == 2
    assert "--method vae-gan" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override,key",
    [
        ("method.denoiser.kind=continuous", "'method.denoiser'"),
        ("method.denoiser.num_layers=3", "'method.denoiser'"),
        ("method.flow.scale=2.0", "'method.flow'"),
        ("denoiser.num_layers=3", "--set denoiser.num_layers: not a setting of method 'dcr'"),
        ("denoiser.kind=sd", "--method diva|dcr|naive-contrastive"),
    ],
)
def test_method_denoiser_mismatch_exits_2(capsys, override, key):
    """GenHancer's settings are not in a frozen-SD method's section (new keys: unknown key; old
    top-level keys: named as another method's)."""
    assert _main("--method", "dcr", "--preset", "tiny", "--set", override, "--describe") == 2
    err = capsys.readouterr().err
    assert key in err and err.count("\n") == 1


def test_target_disagreeing_with_the_unet_is_refused(tiny_method_config, tiny_sd_dirs):
    from enhance.train import build_model

    cfg = tiny_method_config("dcr", f"method.sd.path={tiny_sd_dirs['epsilon']}")
    with pytest.raises(UserError, match="method.sd.target=v_prediction"):
        build_model(cfg)
    cfg = tiny_method_config(
        "dcr", f"method.sd.path={tiny_sd_dirs['epsilon']}", "method.sd.allow_target_mismatch=true"
    )
    assert build_model(cfg).denoiser.target_type == "v_prediction"


def test_cross_attention_width_mismatch_is_refused(tiny_method_config):
    from enhance.train import build_model

    with pytest.raises(UserError, match="method.sd.cross_attention_dim=48"):
        build_model(tiny_method_config("dcr", "method.sd.cross_attention_dim=48"))


def test_unknown_prediction_type_is_refused(tmp_path, tiny_method_config, tiny_sd_dirs):
    import shutil

    from enhance.train import build_model

    sd = tmp_path / "sd"
    shutil.copytree(tiny_sd_dirs["v_prediction"], sd)
    conf = sd / "scheduler" / "scheduler_config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "prediction_type": "sample"}))
    with pytest.raises(UserError, match="prediction_type 'sample'"):
        build_model(tiny_method_config("dcr", f"method.sd.path={sd}"))


def test_describe_reports_dcr_b_squared_cost(capsys):
    assert _main("--method", "dcr", "--preset", "openai-clip-l14-224", "--describe") == 0
    out = json.loads(capsys.readouterr().out)
    cost = out["method"]["unet_cost"]["stage2"]
    assert cost["unet_calls_per_micro_batch"] == 16 * 16 + 16
    assert out["parameters"]["denoiser_frozen"] == 865_910_724  # SD-2.1 UNet
    assert out["config"]["method"]["sd"]["target"] == "v_prediction"
    assert "denoiser" not in out["config"]["method"] and "vae" not in out["config"]


def test_every_method_has_every_paper_backbone():
    from enhance.config import method_presets

    backbones = {
        "openai-clip-l14-224",
        "openai-clip-l14-336",
        "metaclip-l14-224",
        "metaclip-h14-224",
        "siglip-so400m-224",
        "siglip-so400m-384",
        "tiny",
    }
    for method in METHODS:
        assert backbones <= set(method_presets(method)), method


def test_dcr_on_an_open_clip_tower_exports_what_open_clip_loads(tmp_path, tiny_method_config, tmp_model_dirs):
    import open_clip
    from safetensors.torch import load_file as load_st

    from enhance.train import run

    cfg = tiny_method_config(
        "dcr", "backbone.family=open_clip", f"backbone.name_or_path={tmp_model_dirs.open_clip_json}"
    )
    run(cfg, tmp_path / "run")
    target = tmp_path / "run" / "export" / "open_clip"
    meta = json.loads((target / "open_clip_config.json").read_text())
    model = open_clip.create_model(meta["model_name"])
    model.load_state_dict(load_st(target / "open_clip_model.safetensors"))  # strict: same keys
    assert json.loads((tmp_path / "run" / "export" / "genhancer_export.json").read_text())["method"] == "dcr"


def test_dcr_export_reconstructs_like_the_training_model(tmp_path, tiny_method_config):
    """``load_denoiser_export`` rebuilds projector + frozen SD; its reconstruction from a given
    global token equals the training model's; DIVA's export is refused by name."""
    from enhance.export import load_denoiser_export
    from enhance.train import build_model, run

    cfg = tiny_method_config("dcr", "stage2.steps=1")
    run(cfg, tmp_path / "run")
    export = load_denoiser_export(tmp_path / "run" / "export" / "denoiser", cfg.cache_dir)
    model = build_model(cfg)
    model.projector.load_state_dict(export.projector.state_dict())
    pixels = torch.zeros(2, 3, 32, 32)
    token = model.backbone(pixels).global_token.detach()
    a = export.reconstruct(token, pixels, torch.Generator().manual_seed(0), steps=2)
    b = model.reconstruct(pixels, torch.Generator().manual_seed(0), steps=2)
    assert a.shape == (2, 3, 32, 32) and torch.allclose(a, b, atol=1e-5)


def test_diva_export_is_not_a_global_token_reconstruction(tmp_path, tiny_method_config):
    from enhance.export import load_denoiser_export
    from enhance.train import run

    run(tiny_method_config("diva", "stage2.steps=1"), tmp_path / "run")
    with pytest.raises(UserError, match="DIVA"):
        load_denoiser_export(tmp_path / "run" / "export" / "denoiser")
