"""Architecture shapes of the paper's models, so presets build on the meta device offline.

``--describe`` and the preset tests count parameters without downloading anything, and a
benchmark can build a random-init 7B-shaped LM (``model.random_init_llm``). Shapes are the
published ``config.json`` values of each id.
"""

from __future__ import annotations

_VICUNA_COMMON = {
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}

KNOWN_LLMS: dict[str, dict] = {
    "lmsys/vicuna-7b-v1.5": {
        **_VICUNA_COMMON,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    "lmsys/vicuna-13b-v1.5": {
        **_VICUNA_COMMON,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
    },
}

_CLIP_L = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}

# (model_type of the vision config, kwargs)
KNOWN_TOWERS: dict[str, tuple[str, dict]] = {
    "openai/clip-vit-large-patch14-336": ("clip_vision_model", {**_CLIP_L, "image_size": 336}),
    "openai/clip-vit-large-patch14": ("clip_vision_model", {**_CLIP_L, "image_size": 224}),
    "google/siglip-so400m-patch14-384": (
        "siglip_vision_model",
        {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 384,
        },
    ),
}


def llm_config(name: str):
    """A ``LlamaConfig`` for a known id, or None."""
    from transformers import LlamaConfig

    kwargs = KNOWN_LLMS.get(name)
    return LlamaConfig(**kwargs) if kwargs is not None else None


def tower_config(name: str):
    """A CLIP/SigLIP vision config for a known id, or None."""
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    entry = KNOWN_TOWERS.get(name)
    if entry is None:
        return None
    model_type, kwargs = entry
    cls = CLIPVisionConfig if model_type == "clip_vision_model" else SiglipVisionConfig
    return cls(**kwargs)
