"""A transformers ``CLIPModel`` folder written as an open_clip model (the reverse of the ``clip``
layout map), so a published tower loads in open_clip as well as in transformers.

The open_clip architecture is derived from the transformers config (widths, depths, heads, patch,
resolution, QuickGELU or GELU); its state dict is filled key by key through
:func:`enhance.towers.families.map_clip` run on open_clip's own names, so both directions share one
table. SigLIP towers are not written (open_clip builds them on a named timm trunk).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from enhance.towers.families import map_clip
from genhancer.runtime.errors import UserError

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"


def open_clip_config(config) -> dict:
    """open_clip's model config for a transformers ``CLIPConfig``."""
    v, t = config.vision_config, config.text_config
    return {
        "embed_dim": int(config.projection_dim),
        "quick_gelu": v.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": int(v.image_size),
            "layers": int(v.num_hidden_layers),
            "width": int(v.hidden_size),
            "head_width": int(v.hidden_size // v.num_attention_heads),
            "mlp_ratio": v.intermediate_size / v.hidden_size,
            "patch_size": int(v.patch_size),
        },
        "text_cfg": {
            "context_length": int(t.max_position_embeddings),
            "vocab_size": int(t.vocab_size),
            "width": int(t.hidden_size),
            "heads": int(t.num_attention_heads),
            "layers": int(t.num_hidden_layers),
            "mlp_ratio": t.intermediate_size / t.hidden_size,
        },
    }


def hf_to_open_clip_state(hf_state: dict[str, torch.Tensor], names: dict[str, torch.Tensor]) -> dict:
    """open_clip's state dict (its keys and shapes in ``names``) filled from ``hf_state``."""
    out: dict[str, torch.Tensor] = {}
    per_source: dict[str, list[str]] = {}
    for hf_key, (src_key, _) in map_clip(names).items():
        per_source.setdefault(src_key, []).append(hf_key)
    for key, like in names.items():
        hf_keys = per_source.get(key)
        if hf_keys is None:
            continue  # buffers (attn_mask) keep open_clip's values
        if key in ("visual.proj", "text_projection"):
            value = hf_state[hf_keys[0]].T
        elif len(hf_keys) == 3:  # packed q/k/v
            value = torch.cat([hf_state[k] for k in hf_keys])
        else:
            value = hf_state[hf_keys[0]]
        out[key] = value.reshape(like.shape).contiguous()
    return out


def write_open_clip(hf_dir: str | Path, out_dir: str | Path, model_name: str) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` for the ``CLIPModel`` in
    ``hf_dir``; returns ``out_dir``."""
    import open_clip
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoImageProcessor

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    config = AutoConfig.from_pretrained(hf_dir)
    if config.model_type != "clip":
        raise UserError(
            f"{hf_dir} holds a '{config.model_type}' model; only CLIP towers are written for open_clip"
        )
    cfg = open_clip_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{model_name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    names = open_clip.create_model(model_name, device="meta").state_dict()  # names and shapes only
    hf_state: dict[str, torch.Tensor] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        hf_state.update(load_file(f))
    state = hf_to_open_clip_state(hf_state, names)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    ip = AutoImageProcessor.from_pretrained(hf_dir)
    preprocess = {
        "mean": [float(x) for x in ip.image_mean],
        "std": [float(x) for x in ip.image_std],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    meta = {"model_name": model_name, "model_cfg": cfg, "preprocess_cfg": preprocess}
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
