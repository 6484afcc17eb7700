"""``llava-train --describe``'s memory plan: each stage per GPU, the LM's activations measured.

One decoder layer of the configured LM at its real width (SDPA attention, as trained) runs a
forward at micro-batches 1 and 2 over ``MEASURE_TOKENS`` tokens under the configured autocast
dtype, with the weights trainable (full finetune), frozen with LoRA adapters (LoRA finetune) or
frozen (pretrain: the gradient still flows through the LM to the projector); the final norm,
``lm_head`` and the float32 cross-entropy are measured the same way. Saved bytes per token are
scaled to ``data.max_length`` (SDPA keeps no sequence-squared tensor, so the bytes are linear in
the length: the worst case, every sample at the maximum) and by the number of layers; with
``model.gradient_checkpointing`` a layer keeps only its input, plus one layer re-run in backward.
The vision tower is frozen and runs without gradient, so it keeps no activations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genhancer.runtime import memory
from genhancer.runtime.memory import Activations, Part, Setup
from llava_integration.shapes import KNOWN_LLMS
from llava_integration.tiny import TINY_LLM_RECIPE, build_tokenizer

MEASURE_TOKENS = 256
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_STORAGE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _materialise(module: nn.Module) -> nn.Module:
    module = module.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    return module


def _saved(model: nn.Module, run, precision: str, tag_of) -> dict[int, dict[str, int]]:
    out = {}
    for batch in (1, 2):
        with torch.autocast(
            "cpu", dtype=_DTYPES.get(precision, torch.bfloat16), enabled=precision in _DTYPES
        ):
            with memory.saved_bytes(model.parameters(), tag_of(model)) as saved:
                loss = run(model, batch)
        del loss
        out[batch] = saved.by_tag
    return out


def lm_slice(
    llm: dict, mode: str, lora_r: int, lora_alpha: int, precision: str, storage: str = "float32"
) -> dict[str, float]:
    """Per-sample saved bytes per token of one decoder layer (``layer``) and of the head
    (``head``: final norm, lm_head, float32 cross-entropy), at micro-batch slope; ``mode`` is
    ``full`` | ``lora`` | ``frozen``."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    config = LlamaConfig(**llm, attn_implementation="sdpa")

    class Slice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = LlamaDecoderLayer(config, layer_idx=0)
            self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    with torch.device("meta"):
        model = Slice()
    if mode == "lora":
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = inject_adapter_in_model(
            LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=targets), model
        )
    model = _materialise(model).to(getattr(torch, storage))
    if storage != "float32":  # weights already in the training dtype (DeepSpeed bf16): no autocast
        precision = "no"
    rotary = LlamaRotaryEmbedding(config)
    for name, p in model.named_parameters():
        p.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))
    tokens = MEASURE_TOKENS

    def run(m, b):
        x = torch.randn(b, tokens, config.hidden_size, dtype=getattr(torch, storage), requires_grad=True)
        positions = torch.arange(tokens).unsqueeze(0).expand(b, -1)
        cos_sin = rotary(x, positions)
        h = m.layer(x, attention_mask=None, position_ids=positions, position_embeddings=cos_sin)
        h = h[0] if isinstance(h, tuple) else h
        logits = m.lm_head(m.norm(h))
        labels = torch.randint(0, config.vocab_size, (b, tokens))
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    by_batch = _saved(model, run, precision, lambda m: {"layer": m.layer, "head": m.norm})
    # the head's lm_head and loss run outside a tagged module: "other" holds them (with the norm)
    out = {}
    for tag in ("layer", "head", "other"):
        slope, fixed = memory.slope_and_fixed(by_batch[1].get(tag, 0), by_batch[2].get(tag, 0))
        out[f"{tag}_per_token"] = slope / tokens
        out[f"{tag}_fixed"] = fixed
    out["layer_input_per_token"] = config.hidden_size * (
        2 if precision in _DTYPES or storage != "float32" else 4
    )
    return out


def lora_params(llm: dict, r: int) -> int:
    """LoRA adapter parameters over every linear of every decoder layer (LLaVA's LoRA recipe)."""
    h, i = llm["hidden_size"], llm["intermediate_size"]
    kv = h * llm.get("num_key_value_heads", llm["num_attention_heads"]) // llm["num_attention_heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    return llm["num_hidden_layers"] * sum(r * (a + b) for a, b in shapes)


def memory_section(cfg: Any, described: dict, args: Any) -> dict:
    """``{"memory_plan": ...}`` for ``llava-train --describe``: each stage's per-GPU plan."""
    setup = memory.setup_from(args)
    setup.mixed_precision = cfg.train.mixed_precision
    counts = described.get("parameters", {})
    llm = KNOWN_LLMS.get(cfg.model.llm)
    if llm is None and cfg.model.llm.startswith("genhancer-tiny:"):
        llm = _tiny_llm(cfg)
    if llm is None or not isinstance(counts.get("language_model"), int):
        return {
            "memory_plan": {"note": "memory plan needs a known LM shape (see llava_integration/shapes.py)"}
        }
    precision = cfg.train.mixed_precision
    storage = "bfloat16" if setup.zero_stage else _STORAGE.get(cfg.model.dtype, "float32")
    gc = cfg.model.gradient_checkpointing
    length = cfg.data.max_length
    out: dict[str, Any] = {"setup": setup.label(), "gradient_checkpointing": gc, "tokens_per_sample": length}
    torch_version = torch.__version__.split("+")[0]
    for name in cfg.train.stages:
        st = getattr(cfg, name)
        mode = {"projector": "frozen", "full": "full", "lora": "lora"}[st.trainable]
        key = {"slice": "llm", "torch": torch_version, "llm": llm, "mode": mode, "precision": precision}
        if mode == "lora":
            key |= {"r": st.lora_r, "alpha": st.lora_alpha}
        key |= {"storage": storage}
        m = memory.cached_measurement(
            key, lambda st=st, mode=mode: lm_slice(llm, mode, st.lora_r, st.lora_alpha, precision, storage)
        )
        layers = llm["num_hidden_layers"]
        layer = m["layer_per_token"] * length
        per_layer_kept = m["layer_input_per_token"] * length if gc else layer
        by_part = {
            "lm_layers": per_layer_kept * layers + (layer if gc else 0.0),
            "lm_head_and_loss": (m["head_per_token"] + m["other_per_token"]) * length,
        }
        acts = Activations(
            per_sample=sum(by_part.values()),
            # fixed: autocast's copies of fp32 weights (none when they are stored in bf16); with
            # checkpointing only the re-run layer holds its copies
            fixed=m["layer_fixed"] * (1 if gc else layers) + m["head_fixed"] + m["other_fixed"],
            source=f"measured: 1 decoder layer + head at real width over {MEASURE_TOKENS} tokens, scaled to "
            f"{length} tokens x {layers} layers" + ("; checkpointed" if gc else ""),
            parts=by_part,
        )
        lm = counts["language_model"]
        lora = lora_params(llm, st.lora_r) if mode == "lora" else 0
        parts = [
            Part("vision_tower", counts.get("vision_tower", 0), 0, storage),
            Part("projector", counts.get("projector", 0), counts.get("projector", 0), storage),
            Part("language_model", lm + lora, lm if mode == "full" else lora, storage),
        ]
        row = memory.plan(parts, acts, st.per_device_batch_size, Setup(**memory.setup_dict(setup)))
        row["other_setups"] = memory.alternatives(parts, acts, st.per_device_batch_size, setup)
        row["trainable"] = st.trainable
        out[name] = row
    return {"memory_plan": out}


def _tiny_llm(cfg: Any) -> dict:
    """The tiny LM's shape (its recipe and tokenizer), so the tiny preset prints a plan too."""
    r = TINY_LLM_RECIPE
    return {
        "hidden_size": r["hidden"],
        "intermediate_size": r["intermediate"],
        "num_hidden_layers": r["layers"],
        "num_attention_heads": r["heads"],
        "num_key_value_heads": r["heads"],
        "vocab_size": len(build_tokenizer()),
    }
