"""Tiny towers in the layouts the method authors released, built by the libraries that own them.

Each builder writes a base transformers folder (the architecture and processor a state dict is
read onto) and returns the original-format model built by its own library with random weights
(every tensor perturbed, so a swapped LayerNorm or a transposed projection cannot hide):

* ``clip``: the OpenAI ``clip`` layout, rebuilt by open_clip's ``build_model_from_openai_state_dict``
  from a float16 state dict (OpenAI's checkpoints are float16), QuickGELU;
* ``open_clip``: an open_clip ``CLIP`` from a registered model config (exact GELU);
* ``open_clip-siglip``: open_clip's ``CustomTextCLIP`` over a timm SigLIP trunk (latent attention
  pool, no class token) registered with timm;
* ``timm-siglip``: the same timm trunk alone.

Also :func:`populate_hub_cache`, which lays files out as ``huggingface_hub`` caches them
(``models--ORG--NAME/{blobs,refs,snapshots}``, snapshot files linking to blobs).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

IMAGE = 32
PATCH = 8
WIDTH = 64  # one head of 64 where the library derives heads as width // 64
EMBED = 32
TEXT_LEN = 16
TIMM_NAME = "genhancer_test_siglip_vit"


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every floating tensor (LayerNorms included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _tokenizer():
    from genhancer.toyworld.models import build_clip_tokenizer

    return build_clip_tokenizer(["a", "photo", "of", "red", "square"], model_max_length=TEXT_LEN)


def _stack(width: int, mlp_ratio: int, layers: int, heads: int, **extra) -> dict:
    """A transformer stack's config, in the key names CLIP's and SigLIP's configs share."""
    return {
        "hidden_size": width,
        "intermediate_size": mlp_ratio * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        **extra,
    }


def _text_stack(tok, width: int, mlp_ratio: int, heads: int, **extra) -> dict:
    """The one-layer text tower over ``tok``'s vocabulary and ``TEXT_LEN`` positions."""
    return _stack(width, mlp_ratio, 1, heads, vocab_size=len(tok), max_position_embeddings=TEXT_LEN, **extra)


def _vision_stack(width: int, mlp_ratio: int, layers: int, heads: int, **extra) -> dict:
    """The image tower at ``IMAGE`` pixels in ``PATCH`` patches."""
    return _stack(width, mlp_ratio, layers, heads, image_size=IMAGE, patch_size=PATCH, **extra)


def build_clip_base(
    out: Path, act: str = "quick_gelu", width: int = WIDTH, layers: int = 2, seed: int = 0
) -> Path:
    """A tiny HF ``CLIPModel`` + ``CLIPProcessor`` shaped like the open_clip/OpenAI models below."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _tokenizer()
    common = {"hidden_act": act, "layer_norm_eps": 1e-5}
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    config = CLIPConfig(
        text_config=_text_stack(tok, WIDTH, 4, heads=1, **ids, **common),
        vision_config=_vision_stack(width, 4, layers, heads=max(1, width // 64), **common),
        projection_dim=EMBED,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out, safe_serialization=True)
    ip = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(out)
    return out


def build_siglip_base(out: Path, seed: int = 0) -> Path:
    """A tiny HF ``SiglipModel`` whose config says the tanh GELU, as google's SigLIP configs do."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tok = _tokenizer()
    common = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
    config = SiglipConfig(
        text_config=_text_stack(tok, WIDTH, 2, heads=2, projection_size=WIDTH, **common),
        vision_config=_vision_stack(WIDTH, 2, 2, heads=2, **common),
    )
    torch.manual_seed(seed)
    SiglipModel(config).save_pretrained(out, safe_serialization=True)
    ip = SiglipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    SiglipProcessor(image_processor=ip, tokenizer=tok).save_pretrained(out)
    return out


def _register_open_clip(name: str, cfg: dict) -> str:
    import open_clip

    folder = Path(tempfile.mkdtemp(prefix="towerkit-"))
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


def open_clip_clip(seed: int = 1, quick_gelu: bool = False, width: int = WIDTH):
    """An open_clip ``CLIP`` (the layout OpenAI's ``clip`` shares), perturbed, in eval mode."""
    import open_clip

    cfg = {
        "embed_dim": EMBED,
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "image_size": IMAGE,
            "layers": 2,
            "width": width,
            "head_width": 64,
            "patch_size": PATCH,
        },
        "text_cfg": {
            "context_length": TEXT_LEN,
            "vocab_size": len(_tokenizer()),
            "width": WIDTH,
            "heads": 1,
            "layers": 1,
        },
    }
    name = _register_open_clip(f"genhancer-towerkit-clip-{width}-{int(quick_gelu)}", cfg)
    torch.manual_seed(seed)  # the library's own init draws from the global generator
    return perturb(open_clip.create_model(name), seed).eval()


def openai_layout(seed: int = 1, width: int = WIDTH) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """A float16 state dict in OpenAI's ``clip`` layout and the model open_clip builds from it."""
    from open_clip.model import build_model_from_openai_state_dict

    src = open_clip_clip(seed, quick_gelu=True, width=width)
    state = {k: v.half() for k, v in src.state_dict().items() if k != "attn_mask"}
    model = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None)
    return state, model.float().eval()


def _register_timm() -> str:
    from timm.models import is_model, register_model
    from timm.models.vision_transformer import VisionTransformer

    if is_model(TIMM_NAME):
        return TIMM_NAME

    def genhancer_test_siglip_vit(pretrained: bool = False, **kw):
        args = dict(
            img_size=IMAGE,
            patch_size=PATCH,
            embed_dim=WIDTH,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            class_token=False,
            global_pool="map",
        )
        args.update({k: v for k, v in kw.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"})
        return VisionTransformer(**args)

    register_model(genhancer_test_siglip_vit)
    return TIMM_NAME


def timm_siglip(seed: int = 2):
    """A timm SigLIP-style ViT (no class token, latent attention pool, no classifier), perturbed."""
    import timm

    torch.manual_seed(seed)
    return perturb(timm.create_model(_register_timm(), num_classes=0), seed).eval()


def open_clip_siglip(seed: int = 3):
    """open_clip's ``CustomTextCLIP`` over the timm trunk, as open_clip builds SigLIP, perturbed."""
    import open_clip

    cfg = {
        "embed_dim": WIDTH,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {
            "image_size": IMAGE,
            "timm_model_name": _register_timm(),
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": "none",
        },
        "text_cfg": {
            "context_length": TEXT_LEN,
            "vocab_size": len(_tokenizer()),
            "width": WIDTH,
            "heads": 2,
            "layers": 1,
            "mlp_ratio": 2.0,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    }
    name = _register_open_clip("genhancer-towerkit-siglip", cfg)
    torch.manual_seed(seed)
    return perturb(open_clip.create_model(name), seed).eval()


def save_state(state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> Path:
    """Write ``state`` as ``.safetensors`` or with ``torch.save`` (by suffix), keys under ``prefix``."""
    state = {prefix + k: v.detach().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def populate_hub_cache(
    cache: Path, repo_id: str, files: dict[str, Path], commit: str = "", ref: str = "main"
) -> Path:
    """Lay ``files`` ({path in repo: local file}) out as ``huggingface_hub`` caches a model repo;
    returns the snapshot folder."""
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snap = repo / "snapshots" / commit
    for rel, src in files.items():
        data = Path(src).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def folder_files(folder: Path, under: str = "") -> dict[str, Path]:
    """{``under``/relative path: file} for every file of a folder (for :func:`populate_hub_cache`)."""
    return {
        (f"{under}/" if under else "") + str(p.relative_to(folder)): p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
