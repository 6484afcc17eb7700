"""``merge_lora_state`` (LoRA merged into a gathered state dict) equals peft's own merge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genhancer.runtime.lora_state import merge_lora_state


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(6, 8)
        self.down = nn.Linear(8, 6, bias=False)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        return self.norm(self.down(torch.relu(self.up(x))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_equals_peft_merge_and_unload(dtype):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    outer = nn.Module()
    outer.net = get_peft_model(_Net(), LoraConfig(r=2, lora_alpha=6, target_modules=["up", "down"]))
    with torch.no_grad():
        for name, p in outer.named_parameters():
            if "lora_B" in name:
                p.normal_()  # peft starts B at zero: give the merge something to add
    outer.to(dtype)
    state = {k: v.clone() for k, v in outer.state_dict().items()}
    assert "net.base_model.model.up.base_layer.weight" in state  # peft's naming
    scalings = {"net.base_model.model.up": 3.0, "net.base_model.model.down": 3.0}  # alpha / r
    merged = merge_lora_state(state, scalings, unwrap={"net.base_model.model.": "net."})

    reference = {f"net.{k}": v for k, v in outer.net.merge_and_unload().state_dict().items()}
    assert merged.keys() == reference.keys()
    for key, value in reference.items():
        assert merged[key].dtype == value.dtype, key
        assert torch.equal(merged[key], value), key


def test_a_lora_layer_without_its_scaling_is_refused():
    state = {"l.base_layer.weight": torch.zeros(2, 2), "l.lora_A.default.weight": torch.zeros(1, 2)}
    state["l.lora_B.default.weight"] = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="without a scaling"):
        merge_lora_state(state, {}, unwrap={})
