"""State-dict layouts of the libraries towers are released in, and their map to transformers' names.

Three layouts, told apart by their keys (a wrapper prefix such as ``class_model.model.`` or
``module.`` is found and stripped):

* ``clip``: OpenAI's ``clip`` package (``visual.conv1.weight``, ``visual.transformer.resblocks.N``,
  ``visual.proj``, ``token_embedding``, ...). open_clip's own ``CLIP`` class uses the same names, so
  this is also the layout of open_clip checkpoints such as MetaCLIP's; it maps onto ``CLIPModel``.
* ``open_clip-siglip``: open_clip's ``CustomTextCLIP`` with a timm trunk (``visual.trunk.*`` for the
  image side, ``text.*`` for the text side, ``logit_bias``); it maps onto ``SiglipModel``.
* ``timm-siglip``: a timm ``VisionTransformer`` with a latent attention pool (``patch_embed``,
  ``blocks.N``, ``attn_pool``), the image side only; the text side comes from the base.

Each map returns ``{transformers key: (source key, tensor)}``; a source key the map does not know
is refused (with its name) rather than dropped, so a layout we have not seen fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genhancer.runtime.errors import UserError

Mapped = dict[str, tuple[str, torch.Tensor]]

#: Entries the original libraries keep in a state dict that hold no weights.
IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask", "text.attn_mask")


def _block(src: str, dst: str, rest: str, value: torch.Tensor, out: Mapped, qkv: str, names: dict) -> bool:
    """One transformer block parameter: packed q/k/v are split into three projections."""
    if rest in (f"{qkv}_weight", f"{qkv}.weight", f"{qkv}_bias", f"{qkv}.bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
            out[f"{dst}self_attn.{part}.{kind}"] = (src, chunk)
        return True
    head, _, kind = rest.rpartition(".")
    if head in names:
        out[f"{dst}{names[head]}.{kind}"] = (src, value)
        return True
    return False


_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TIMM_BLOCK = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def _blocks(key: str, value, out: Mapped, src_prefix: str, dst_prefix: str, table: dict, qkv: str) -> bool:
    if not key.startswith(src_prefix):
        return False
    index, _, rest = key[len(src_prefix) :].partition(".")
    if not index.isdigit():
        return False
    return _block(key, f"{dst_prefix}{index}.", rest, value, out, qkv, table)


def _unknown(family: str, key: str) -> UserError:
    return UserError(f"key '{key}' of the {family} layout has no counterpart in transformers' model")


def map_clip(state: dict[str, torch.Tensor]) -> Mapped:
    """OpenAI ``clip`` / open_clip ``CLIP`` names -> ``CLIPModel`` names."""
    out: Mapped = {}
    direct = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    for key, value in state.items():
        if key in direct:
            out[direct[key]] = (key, value)
        elif key == "visual.proj":  # x @ proj: a Linear's weight is its transpose
            out["visual_projection.weight"] = (key, value.T.contiguous())
        elif key == "text_projection":
            out["text_projection.weight"] = (key, value.T.contiguous())
        elif not (
            _blocks(
                key,
                value,
                out,
                "visual.transformer.resblocks.",
                "vision_model.encoder.layers.",
                _CLIP_BLOCK,
                "attn.in_proj",
            )
            or _blocks(
                key,
                value,
                out,
                "transformer.resblocks.",
                "text_model.encoder.layers.",
                _CLIP_BLOCK,
                "attn.in_proj",
            )
        ):
            raise _unknown("clip", key)
    return out


def _map_timm_vision(key: str, value: torch.Tensor, out: Mapped, src: str) -> bool:
    """timm SigLIP ViT names (without the trunk prefix) -> ``SiglipModel`` vision names."""
    v = "vision_model."
    direct = {
        "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
        "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
        "norm.weight": "post_layernorm.weight",
        "norm.bias": "post_layernorm.bias",
        "attn_pool.proj.weight": "head.attention.out_proj.weight",
        "attn_pool.proj.bias": "head.attention.out_proj.bias",
        "attn_pool.norm.weight": "head.layernorm.weight",
        "attn_pool.norm.bias": "head.layernorm.bias",
        "attn_pool.mlp.fc1.weight": "head.mlp.fc1.weight",
        "attn_pool.mlp.fc1.bias": "head.mlp.fc1.bias",
        "attn_pool.mlp.fc2.weight": "head.mlp.fc2.weight",
        "attn_pool.mlp.fc2.bias": "head.mlp.fc2.bias",
    }
    if key in direct:
        out[v + direct[key]] = (src, value)
    elif key == "pos_embed":  # [1, N, D] -> an embedding table [N, D]
        out[v + "embeddings.position_embedding.weight"] = (
            src,
            value.reshape(value.shape[-2], value.shape[-1]),
        )
    elif key == "attn_pool.latent":
        out[v + "head.probe"] = (src, value)
    elif key.startswith("attn_pool.q.") or key.startswith("attn_pool.kv."):
        return True  # packed below, once both halves are known
    elif key.startswith("blocks."):
        index, _, rest = key[len("blocks.") :].partition(".")
        if not index.isdigit():
            return False
        return _block(src, f"{v}encoder.layers.{index}.", rest, value, out, "attn.qkv", _TIMM_BLOCK)
    else:
        return False
    return True


def _pack_pool(state: dict[str, torch.Tensor], prefix: str, out: Mapped) -> None:
    """timm's latent pool keeps q and kv as two Linears; HF's head is one MultiheadAttention."""
    for kind in ("weight", "bias"):
        q, kv = state.get(f"{prefix}attn_pool.q.{kind}"), state.get(f"{prefix}attn_pool.kv.{kind}")
        if q is not None and kv is not None:
            out[f"vision_model.head.attention.in_proj_{kind}"] = (
                f"{prefix}attn_pool.q.{kind}",
                torch.cat([q, kv]),
            )


def map_timm_siglip(state: dict[str, torch.Tensor]) -> Mapped:
    """A timm SigLIP ViT (image side only) -> ``SiglipModel`` ``vision_model.*``."""
    out: Mapped = {}
    for key, value in state.items():
        if not _map_timm_vision(key, value, out, key):
            raise _unknown("timm-siglip", key)
    _pack_pool(state, "", out)
    return out


def map_open_clip_siglip(state: dict[str, torch.Tensor]) -> Mapped:
    """open_clip ``CustomTextCLIP`` (timm trunk + open_clip text tower) -> ``SiglipModel``."""
    out: Mapped = {}
    t = "text_model."
    direct = {
        "text.token_embedding.weight": t + "embeddings.token_embedding.weight",
        "text.positional_embedding": t + "embeddings.position_embedding.weight",
        "text.ln_final.weight": t + "final_layer_norm.weight",
        "text.ln_final.bias": t + "final_layer_norm.bias",
        "text.text_projection.weight": t + "head.weight",
        "text.text_projection.bias": t + "head.bias",
        "logit_scale": "logit_scale",
        "logit_bias": "logit_bias",
    }
    for key, value in state.items():
        if key in direct:
            out[direct[key]] = (key, value)
        elif key.startswith("visual.trunk."):
            if not _map_timm_vision(key[len("visual.trunk.") :], value, out, key):
                raise _unknown("open_clip-siglip", key)
        elif not _blocks(
            key, value, out, "text.transformer.resblocks.", t + "encoder.layers.", _CLIP_BLOCK, "attn.in_proj"
        ):
            raise _unknown("open_clip-siglip", key)
    _pack_pool(state, "visual.trunk.", out)
    return out


@dataclass(frozen=True)
class Family:
    """A layout: how to recognise it, which transformers model it becomes, how to map it.

    ``vision_only``: the layout holds the image side only (the rest comes from the base).
    ``hidden_act``: the activation the original library computes with, written into the converted
    config when it differs from the base's (timm and open_clip's SigLIP use exact GELU where
    transformers' SigLIP configs say the tanh approximation); None keeps the base's.
    """

    name: str
    anchor: str
    model_type: str
    mapper: Callable[[dict[str, torch.Tensor]], Mapped]
    vision_only: bool = False
    hidden_act: str | None = None
    description: str = ""


FAMILIES: tuple[Family, ...] = (
    Family(
        "open_clip-siglip",
        "visual.trunk.patch_embed.proj.weight",
        "siglip",
        map_open_clip_siglip,
        hidden_act="gelu",
        description="open_clip SigLIP (timm trunk + open_clip text tower)",
    ),
    Family(
        "clip",
        "visual.conv1.weight",
        "clip",
        map_clip,
        description="OpenAI clip / open_clip CLIP",
    ),
    Family(
        "timm-siglip",
        "patch_embed.proj.weight",
        "siglip",
        map_timm_siglip,
        vision_only=True,
        hidden_act="gelu",
        description="timm SigLIP ViT (image side)",
    ),
)


def detect_family(keys: list[str]) -> tuple[Family, str]:
    """The layout of a state dict and the wrapper prefix to strip (``""`` when none).

    The first family whose anchor key appears (with any prefix) wins; open_clip's SigLIP anchor is
    tried before the bare timm one it contains."""
    for family in FAMILIES:
        for key in keys:
            if key == family.anchor or key.endswith("." + family.anchor):
                prefix = key[: len(key) - len(family.anchor)]
                if family.name == "timm-siglip" and prefix.endswith("visual.trunk."):
                    continue
                return family, prefix
    sample = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    known = "; ".join(f"{f.description} ({f.anchor})" for f in FAMILIES)
    raise UserError(f"unknown state dict layout (first keys: {sample}); known layouts: {known}")
