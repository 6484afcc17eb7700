"""Tower specs: parsing, hub folders from an offline cache in the hub's own layout, and every
command that takes a tower resolving them (leaderboard, llava-train, the demo, enhance)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testkit import load_test_module, subprocess_env

from enhance.towers.resolve import resolve_tower
from enhance.towers.spec import HubRef, check_tower_spec, parse_hub, parse_tower_spec
from genhancer.runtime.errors import UserError

kit = load_test_module("towerkit.py", "_genhancer_towerkit")
REPO = "msj9817/GenHancer"
SUB = "OpenAICLIP/clip-vit-tiny"


def test_parse_hub_specs():
    assert parse_hub("hf:msj9817/GenHancer/OpenAICLIP/clip-vit-large-patch14") == HubRef(
        "msj9817/GenHancer", "OpenAICLIP/clip-vit-large-patch14", ""
    )
    assert parse_hub("hf:org/name@v1.0") == HubRef("org/name", "", "v1.0")
    ref = parse_hub("hf:BAAI/DIVA/OpenAICLIP/OpenAI-ViT-L-14-224.pth@abc123")
    assert ref.is_file and ref.path == "OpenAICLIP/OpenAI-ViT-L-14-224.pth" and ref.revision == "abc123"
    assert str(ref) == "hf:BAAI/DIVA/OpenAICLIP/OpenAI-ViT-L-14-224.pth@abc123"
    spec = parse_tower_spec("hf:BAAI/DIVA/SigLIP/SigLIP-ViT-SO-14-224.pth::google/siglip-so400m-patch14-224")
    assert spec.kind == "state_dict" and spec.base == "google/siglip-so400m-patch14-224"
    assert parse_tower_spec("openai/clip-vit-large-patch14").kind == "plain"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hf:onlyname", "is not a hub spec; expected hf:ORG/NAME"),
        ("hf:org//sub", "is not a hub spec"),
        ("hf:org/name@", "is not a hub spec"),
        ("hf:org/na me", "bad path part 'na me'"),
        ("hf:org/name/../x", "bad path part '..'"),
        ("hf:BAAI/DIVA/x.pth", "names a state dict; give the base it belongs to"),
        ("weights.txt::openai/clip-vit-large-patch14", "is not a state dict file"),
        ("::base", "must be WEIGHTS::BASE"),
        ("a.pth::b.pth::c", "more than one '::'"),
        ("/nowhere/w.pth::openai/clip-vit-large-patch14", "state dict not found: /nowhere/w.pth"),
        ("hf:o/n/w.pth::/no/base", "base tower folder not found: /no/base"),
    ],
)
def test_bad_specs_are_one_line_naming_the_option(spec, message):
    with pytest.raises(UserError) as err:
        check_tower_spec(spec, "--clip x")
    assert message in str(err.value) and str(err.value).startswith("--clip x: ")
    assert "\n" not in str(err.value)


def test_a_local_state_dict_without_base_is_refused(tmp_path):
    f = tmp_path / "w.pth"
    torch.save({}, f)
    with pytest.raises(UserError, match=r"is a state dict; give the base it belongs to: '.*w.pth::BASE'"):
        check_tower_spec(str(f))


@pytest.fixture
def hub_cache(tmp_path, tmp_model_dirs, monkeypatch):
    """A hub cache on disk holding a GenHancer-like repository (a tiny CLIP in a per-backbone
    subfolder, at two commits, main and a tag) and a DIVA-like one (a .pth), used offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    old = kit.populate_hub_cache(
        cache, REPO, kit.folder_files(tmp_model_dirs.clip, SUB), commit="a" * 40, ref="v0"
    )
    state, _ = kit.openai_layout(seed=5)
    sd = kit.save_state(state, tmp_path / "OpenAI-ViT-tiny.pth")
    base = kit.build_clip_base(tmp_path / "clip-base")
    kit.populate_hub_cache(cache, "BAAI/DIVA", {"OpenAICLIP/OpenAI-ViT-tiny.pth": sd})
    kit.populate_hub_cache(cache, "openai/clip-tiny", kit.folder_files(base))
    new_files = kit.folder_files(tmp_model_dirs.clip, SUB) | {
        "README.md": tmp_model_dirs.clip / "config.json"
    }
    kit.populate_hub_cache(cache, REPO, new_files, commit="b" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {"cache": cache, "old": old}


def test_hub_subfolders_resolve_offline_at_a_branch_a_tag_and_a_commit(hub_cache):
    main = Path(resolve_tower(f"hf:{REPO}/{SUB}"))
    assert main.parts[-4:] == ("snapshots", "b" * 40, "OpenAICLIP", "clip-vit-tiny")
    assert (main / "config.json").is_file()
    assert Path(resolve_tower(f"hf:{REPO}/{SUB}@v0")) == hub_cache["old"] / SUB
    assert Path(resolve_tower(f"hf:{REPO}/{SUB}@{'a' * 40}")) == hub_cache["old"] / SUB


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hf:someone/absent/x", "not in the local hub cache with HF_HUB_OFFLINE=1"),
        (f"hf:{REPO}/{SUB}@v9", "not in the local hub cache with HF_HUB_OFFLINE=1"),
        (f"hf:{REPO}/SigLIP/none", "the repository has no folder 'SigLIP/none'"),
        (f"hf:{REPO}/OpenAICLIP", "holds no model (no config.json in OpenAICLIP; found: clip-vit-tiny)"),
        ("hf:BAAI/DIVA/OpenAICLIP/absent.pth::hf:openai/clip-tiny", "not in the local hub cache"),
    ],
)
def test_unresolvable_hub_specs_are_one_line(hub_cache, spec, message):
    with pytest.raises(UserError) as err:
        resolve_tower(spec, option="--clip enh")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("--clip enh: ")


def test_a_hub_state_dict_on_a_hub_base_converts_once(hub_cache, tmp_path):
    spec = "hf:BAAI/DIVA/OpenAICLIP/OpenAI-ViT-tiny.pth::hf:openai/clip-tiny"
    folder = Path(resolve_tower(spec, cache_dir=tmp_path / "gc"))
    assert folder.parent == tmp_path / "gc" / "towers" and folder.name.startswith("OpenAI-ViT-tiny-")
    meta = json.loads((folder / "genhancer_conversion.json").read_text())
    assert meta["family"] == "clip" and meta["source"] == "hf:BAAI/DIVA/OpenAICLIP/OpenAI-ViT-tiny.pth"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_tower(spec, cache_dir=tmp_path / "gc")) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again


def test_every_command_resolves_tower_specs(hub_cache, tmp_model_dirs, tmp_path):
    """leaderboard (and the demo, through the same loader), llava-train's tower and enhance's
    backbone read hf: folders; the loaded weights are the cached folder's."""
    from demo.models import _load_encoder
    from enhance.backbones import build_backbone
    from enhance.config import BackboneConfig
    from eval.clip.encoders import load_encoder, resolve_spec
    from llava_integration.model import load_tower

    spec = f"hf:{REPO}/{SUB}"
    kind, where = resolve_spec(spec)
    assert kind == "hf" and Path(where).parts[-3:] == ("b" * 40, "OpenAICLIP", "clip-vit-tiny")
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    direct = load_encoder(str(tmp_model_dirs.clip), device="cpu")
    for enc in (load_encoder(spec, device="cpu"), _load_encoder(spec, "cpu", None)):
        assert torch.equal(enc.global_token(px), direct.global_token(px))
    tower = load_tower(spec)
    assert tower.config.image_size == 32 and tower.source == spec
    diva = "hf:BAAI/DIVA/OpenAICLIP/OpenAI-ViT-tiny.pth::hf:openai/clip-tiny"  # llava-train on a state dict
    tower = load_tower(diva, cache_dir=str(tmp_path / "gc"))
    _, original = kit.openai_layout(seed=5)
    with torch.no_grad():  # the vision side LLaVA reads, times OpenAI's projection: the embedding
        got = tower.model(pixel_values=px).pooler_output @ original.visual.proj.float()
        assert float((got - original.encode_image(px)).abs().max()) < 1e-5
    backbone = build_backbone(BackboneConfig(family="openai-clip", name_or_path=spec, image_size=32))
    with torch.no_grad():
        assert torch.allclose(backbone(px).global_token, direct.global_token(px))


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~18 s on a shared 2-core machine
def test_convert_cli_end_to_end_with_the_hub_environment(tmp_path):
    """``genhancer-convert`` in a fresh interpreter that finds the cache through HF_HUB_CACHE and
    stays offline through HF_HUB_OFFLINE=1, as on an air-gapped cluster."""
    cache = tmp_path / "hub"
    state, original = kit.openai_layout(seed=9)
    sd = kit.save_state(state, tmp_path / "OpenAI-ViT-tiny.pth")
    kit.populate_hub_cache(cache, "BAAI/DIVA", {"OpenAICLIP/OpenAI-ViT-tiny.pth": sd})
    kit.populate_hub_cache(cache, "openai/clip-tiny", kit.folder_files(kit.build_clip_base(tmp_path / "b")))
    env = subprocess_env() | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    src, out = "hf:BAAI/DIVA/OpenAICLIP/OpenAI-ViT-tiny.pth", tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "enhance.towers.cli",
        src,
        "--base",
        "hf:openai/clip-tiny",
        "--out",
        str(out),
    ]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout[ok.stdout.index("{\n") :])["family"] == "clip"
    from transformers import CLIPModel

    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = CLIPModel.from_pretrained(out).float()  # stored as the .pth was: float16
    with torch.no_grad():
        got = model.get_image_features(pixel_values=px)
        got = got if isinstance(got, torch.Tensor) else got.pooler_output
        assert float((got - original.encode_image(px)).abs().max()) < 1e-5


def test_convert_cli_bad_input_is_exit_2_one_line(hub_cache, tmp_path, capsys):
    from enhance.towers.cli import main

    wide, _ = kit.openai_layout(seed=1, width=128)
    src = str(kit.save_state(wide, tmp_path / "B16.pth"))
    cases = [
        ([src, "--base", "hf:openai/clip-tiny"], "state dict key 'visual.class_embedding' has shape [128]"),
        (
            ["hf:BAAI/DIVA/x.pth", "--base", "hf:openai/clip-tiny"],
            "not in the local hub cache with HF_HUB_OFFLINE=1",
        ),
        ([src, "--base", "hf:openai/none"], "--base: cannot resolve 'hf:openai/none'"),
        ([str(tmp_path / "none.pth"), "--base", "x/y"], "SRC/--base: state dict not found"),
    ]
    for i, (args, message) in enumerate(cases):
        assert main([*args, "--out", str(tmp_path / f"o{i}")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("genhancer-convert: error: ") and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / f"o{i}").exists()


def test_bad_tower_specs_are_refused_before_torch_loads(tmp_path):
    """Every command's tower option, and publish's --repo-id, in a fresh interpreter: exit 2, one
    line naming the option, and no model library imported."""
    script = f"""
import contextlib, io, sys
from eval.cli import main as leaderboard
from llava_integration.cli import main as llava
from enhance.towers.cli import main as convert
from enhance.publish.cli import main as publish
out = r"{tmp_path}"
cases = [
    (leaderboard, ["--clip", "e=hf:bad", "--output-dir", out + "/b"], "--clip e: 'hf:bad' is not a hub spec"),
    (leaderboard, ["--clip", "e=/no/w.pth::openai/clip-vit-large-patch14", "--output-dir", out + "/b"], "state dict not found"),
    (llava, ["--preset", "tiny", "--vision-tower", "hf:o/n/w.pth", "--output-dir", out + "/l"], "model.vision_tower: 'hf:o/n/w.pth' names a state dict"),
    (convert, ["/no/w.pth", "--base", "o/n", "--out", out + "/c"], "SRC/--base: state dict not found"),
    (publish, [out, "--repo-id", "a/b/c"], "--repo-id 'a/b/c' is not ORG/NAME"),
]
for fn, argv, message in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert fn(argv) == 2, argv
    assert message in err.getvalue() and err.getvalue().count("\\n") == 1, err.getvalue()
heavy = sorted(m for m in ("torch", "transformers", "open_clip", "diffusers") if m in sys.modules)
assert not heavy, heavy
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
