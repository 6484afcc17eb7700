"""Released state dicts converted to transformers give the image embeddings of the original model.

For each layout the authors released towers in, the original-format model is built by its own
library (open_clip for OpenAI's ``clip`` layout and its own, timm for SigLIP) with random weights,
its state dict converted with ``genhancer-convert``'s code onto a tiny base, and the converted
folder loaded the way every command loads towers. Image embeddings must agree to 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch
from testkit import load_test_module

from enhance.backbones.hf import load_hf_backbone
from enhance.towers.convert import CONVERSION_FILE, convert
from genhancer.runtime.errors import UserError

kit = load_test_module("towerkit.py", "_genhancer_towerkit")

TOL = 1e-5


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 3, kit.IMAGE, kit.IMAGE, generator=torch.Generator().manual_seed(seed))


def _hf_embedding(folder, family: str) -> torch.Tensor:
    backbone = load_hf_backbone(family, str(folder), kit.IMAGE).float()
    with torch.no_grad():
        return backbone(_pixels()).global_token


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


def test_openai_clip_layout_matches_open_clip(tmp_path):
    base = kit.build_clip_base(tmp_path / "base", act="quick_gelu")
    state, original = kit.openai_layout(seed=11)
    src = kit.save_state(state, tmp_path / "OpenAI-ViT-tiny.pth")
    info = convert(src, str(base), tmp_path / "hf")
    assert info.family == "clip" and info.prefix == "" and not info.from_base
    with torch.no_grad():
        want = original.encode_image(_pixels())
        want_text = original.encode_text(torch.tensor([[49406, 5, 6, 49407] + [0] * 12]).clamp(max=40))
    got = _hf_embedding(tmp_path / "hf", "openai-clip")
    assert _max_diff(got, want) < TOL
    assert float(want.abs().mean()) > 1e-2  # not a trivially small embedding
    from transformers import CLIPModel

    hf = CLIPModel.from_pretrained(tmp_path / "hf").float().eval()
    ids = torch.tensor([[49406, 5, 6, 49407] + [0] * 12]).clamp(max=40)
    with torch.no_grad():  # the text side too (pooled at the highest id, as OpenAI pools)
        out = hf.text_model(input_ids=ids)
        got_text = hf.text_projection(out.last_hidden_state[0, ids[0].argmax()])[None]
    assert _max_diff(got_text, want_text) < TOL
    meta = json.loads((tmp_path / "hf" / CONVERSION_FILE).read_text())
    assert meta["family"] == "clip" and meta["source"].endswith("OpenAI-ViT-tiny.pth")


def test_open_clip_layout_matches_open_clip_under_a_wrapper_prefix(tmp_path):
    """MetaCLIP's layout (open_clip ``CLIP``, exact GELU here) saved the way DIVA's trainer saves
    (under ``class_model.model.`` beside other modules' weights) as safetensors."""
    base = kit.build_clip_base(tmp_path / "base", act="gelu")
    original = kit.open_clip_clip(seed=12)
    state = dict(original.state_dict())
    state.pop("attn_mask", None)
    wrapped = {f"class_model.model.{k}": v for k, v in state.items()}
    wrapped["visual_proj.weight"] = torch.zeros(4, 4)  # another module of the trainer
    src = kit.save_state(wrapped, tmp_path / "MetaCLIP-tiny.safetensors")
    info = convert(src, str(base), tmp_path / "hf")
    assert info.prefix == "class_model.model." and info.ignored == ["visual_proj.weight"]
    with torch.no_grad():
        want = original.encode_image(_pixels())
    assert _max_diff(_hf_embedding(tmp_path / "hf", "metaclip"), want) < TOL


def test_open_clip_siglip_matches_open_clip(tmp_path):
    base = kit.build_siglip_base(tmp_path / "base")
    original = kit.open_clip_siglip(seed=13)
    src = kit.save_state(original.state_dict(), tmp_path / "SigLIP-tiny.pth")
    info = convert(src, str(base), tmp_path / "hf")
    assert info.family == "open_clip-siglip" and not info.from_base
    assert info.hidden_act == "gelu"  # open_clip/timm compute exact GELU; the base said tanh
    with torch.no_grad():
        want = original.encode_image(_pixels())
    assert _max_diff(_hf_embedding(tmp_path / "hf", "siglip"), want) < TOL
    from transformers import SiglipModel

    hf = SiglipModel.from_pretrained(tmp_path / "hf")
    assert float(hf.logit_bias) == pytest.approx(float(original.logit_bias), abs=1e-6)


def test_timm_siglip_trunk_matches_timm_and_keeps_the_base_text_side(tmp_path):
    from safetensors.torch import load_file

    base = kit.build_siglip_base(tmp_path / "base")
    original = kit.timm_siglip(seed=14)
    src = kit.save_state(original.state_dict(), tmp_path / "trunk.safetensors")
    info = convert(src, str(base), tmp_path / "hf")
    assert info.family == "timm-siglip" and info.from_base
    assert all(not k.startswith("vision_model.") for k in info.from_base)
    with torch.no_grad():
        want = original(_pixels())
    assert _max_diff(_hf_embedding(tmp_path / "hf", "siglip"), want) < TOL
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    key = "text_model.embeddings.token_embedding.weight"
    assert torch.equal(before[key], after[key])


def test_another_base_is_refused_naming_the_first_mismatch(tmp_path):
    """A ViT of another width given with this base: one line, the first key, both shapes."""
    base = kit.build_clip_base(tmp_path / "base", act="quick_gelu")
    state, _ = kit.openai_layout(seed=1, width=128)
    src = kit.save_state(state, tmp_path / "wide.pth")
    with pytest.raises(UserError) as err:
        convert(src, str(base), tmp_path / "hf")
    msg = str(err.value)
    assert "\n" not in msg
    assert "'visual.class_embedding' has shape [128] where base" in msg and "[64]" in msg
    assert not (tmp_path / "hf").exists()


def test_a_family_given_the_wrong_model_type_and_an_unknown_layout_are_refused(tmp_path):
    base = kit.build_clip_base(tmp_path / "base")
    siglip = kit.save_state(kit.timm_siglip().state_dict(), tmp_path / "s.pth")
    with pytest.raises(
        UserError, match="timm SigLIP ViT .image side. layout .siglip. but base .* is a 'clip' model"
    ):
        convert(siglip, str(base), tmp_path / "hf")
    odd = kit.save_state({"encoder.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(UserError, match=r"unknown state dict layout \(first keys: encoder.weight\)"):
        convert(odd, str(base), tmp_path / "hf")


def test_a_key_the_layout_does_not_know_is_refused_by_name(tmp_path):
    base = kit.build_clip_base(tmp_path / "base")
    state, _ = kit.openai_layout()
    state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(kit.WIDTH)
    src = kit.save_state(state, tmp_path / "ls.pth")
    with pytest.raises(UserError, match="key 'visual.transformer.resblocks.0.ls_1.gamma' of the clip layout"):
        convert(src, str(base), tmp_path / "hf")


def test_pickled_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as fh:
        pickle.dump({"visual.conv1.weight": Evil()}, fh)
    with pytest.raises(UserError, match="weights_only"):
        convert(bad, str(kit.build_clip_base(tmp_path / "base")), tmp_path / "hf")


def _openai_clip_model_module(side):
    """``clip/model.py`` of OpenAI's ``clip`` package (PyPI ``openai-clip``), installed with
    ``pip --target`` into a side folder (no dependencies: it shares this environment's torch) and
    imported by path (the package's ``__init__`` needs more than ``model.py`` does)."""
    import importlib.util
    import subprocess
    import sys

    model_py = side / "clip" / "model.py"
    if not model_py.is_file():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(side),
            "openai-clip==1.0.1",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"openai-clip not installable here: {done.stderr.strip().splitlines()[-1:]}")
    spec = importlib.util.spec_from_file_location("_openai_clip_model", model_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # installs OpenAI's clip package from the package index into a side folder
def test_openai_clip_layout_matches_the_clip_package_itself(tmp_path):
    from genhancer.toyworld.models import default_cache_dir

    clip_model = _openai_clip_model_module(default_cache_dir() / "side" / "openai-clip-1.0.1")
    base = kit.build_clip_base(tmp_path / "base", act="quick_gelu")
    state, _ = kit.openai_layout(seed=21)
    original = clip_model.build_model(dict(state)).float().eval()  # float16 weights, as OpenAI's
    convert(kit.save_state(state, tmp_path / "ViT.pth"), str(base), tmp_path / "hf")
    with torch.no_grad():
        want = original.encode_image(_pixels())
    assert _max_diff(_hf_embedding(tmp_path / "hf", "openai-clip"), want) < TOL
