"""LoRA folded into a plain state dict, for weights gathered from a DeepSpeed engine.

Under ZeRO-3 the module's own parameters are partitioned across ranks, so peft's in-place
``merge_and_unload`` cannot run on them; the engine gathers a whole state dict instead
(``accelerator.get_state_dict``), in peft's naming. :func:`merge_lora_state` computes the merged
weights from it as peft does on the CPU (``W + (B @ A) * scaling``, the delta computed in float32
and cast to ``W``'s dtype before the sum) and renames the keys to those of the model without
adapters, so ``save_pretrained`` writes a plain model that ``from_pretrained`` loads.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def merge_lora_state(
    state: Mapping[str, torch.Tensor],
    scalings: Mapping[str, float],
    unwrap: Mapping[str, str],
    adapter: str = "default",
) -> dict[str, torch.Tensor]:
    """``state`` with every adapted linear merged and peft's naming removed.

    Args:
        state: the whole model's weights in peft's naming (``<layer>.base_layer.weight``,
            ``<layer>.lora_A.<adapter>.weight``, ``<layer>.lora_B.<adapter>.weight``).
        scalings: ``alpha / r`` of each adapted layer, by the layer's name in ``state``.
        unwrap: key prefixes to rewrite (peft's wrapper path to the plain module's, e.g.
            ``"model.language_model.base_model.model." -> "model.language_model."``).
        adapter: the adapter to merge.
    """
    out = dict(state)
    for layer, scaling in scalings.items():
        a = out.pop(f"{layer}.lora_A.{adapter}.weight")
        b = out.pop(f"{layer}.lora_B.{adapter}.weight")
        key = f"{layer}.base_layer.weight"
        w = out[key]
        out[key] = w + ((b.float() @ a.float()) * scaling).to(w.dtype)
    leftover = [k for k in out if ".lora_" in k]
    if leftover:
        raise ValueError(f"LoRA weights of layers without a scaling: {leftover[:3]}")
    renamed = {}
    for key, value in out.items():
        for old, new in unwrap.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key.replace(".base_layer.", ".")] = value
    return renamed
