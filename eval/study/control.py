"""The positive control: an intervention known to put the rare attributes into the global token.

A null result means something only if the protocol can detect a tower that *did* learn the
rare attributes. The control trains the same LoRA as stage 2 (rank, alpha, dropout, every
image-side linear, ``stage2.lora_bias``'s biases) on the same enhancement world, batch and number
of steps, but with a supervised loss: cross-entropy of one linear head per rare attribute (count,
orientation, position) on the tower's global token. The heads are thrown away; the merged tower
is saved like an ``enhance`` export (``RUN/export/hf``) and scored by the same protocol.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import CLIPModel, CLIPProcessor

from enhance.backbones.hf import HFCLIPBackbone
from enhance.methods.augment import normalise
from eval.flow_heldout import to_unit
from eval.study.config import StudyConfig
from eval.study.protocol import LABEL_VALUES, render_split, world
from genhancer.runtime.seeding import derive_seed
from genhancer.toyworld.sparse import RARE_ATTRIBUTES

LORA = {"r": 16, "lora_alpha": 16, "lora_dropout": 0.1, "bias": "lora_only"}


def train_supervised_rare(cfg: StudyConfig, clip_dir: Path, seed: int, run_dir: Path, cache_dir: str) -> Path:
    """LoRA + linear heads trained on the rare attributes; returns the merged ``export/hf`` dir."""
    s = cfg.schedule
    model = CLIPModel.from_pretrained(clip_dir)
    processor = CLIPProcessor.from_pretrained(clip_dir)
    backbone = HFCLIPBackbone(model, processor, 64)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(target_modules=backbone.all_linear_targets(), **LORA))
    data = render_split(world(cfg, 2000 + seed), s.images)
    unit = to_unit(data.images, 64)
    labels = {
        a: torch.tensor([list(LABEL_VALUES[a]).index(x[a]) for x in data.attributes]) for a in RARE_ATTRIBUTES
    }
    heads = torch.nn.ModuleDict(
        {a: torch.nn.Linear(backbone.global_dim, len(LABEL_VALUES[a])) for a in RARE_ATTRIBUTES}
    )
    params = [p for p in peft_model.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=s.control_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(derive_seed("study_control", seed))
    peft_model.train()
    curve = []
    for step in range(s.stage2_steps):
        idx = torch.randint(0, len(unit), (s.batch,), generator=gen)
        g = backbone(normalise(unit[idx], backbone.image_mean, backbone.image_std)).global_token
        loss = sum(torch.nn.functional.cross_entropy(heads[a](g), labels[a][idx]) for a in RARE_ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.append({"step": step + 1, "stage": "control", "loss": loss.item()})
    merged = peft_model.merge_and_unload().eval()
    out = run_dir / "export" / "hf"
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    return out
