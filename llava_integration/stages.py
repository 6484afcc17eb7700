"""The two LLaVA-1.5 stages as tasks for ``enhance.trainer.run_loop``.

``pretrain`` trains the projector alone; ``finetune`` trains the LM and projector (``full``) or
LoRA adapters on the LM plus the projector (``lora``). The vision tower never trains: it is
frozen and kept in eval mode (no dropout), so its weights stay bit-identical.
"""

from __future__ import annotations

import torch
from torch import nn

from llava_integration.config import StageConfig


class LlavaTask(nn.Module):
    """Wraps a ``LlavaForConditionalGeneration``; ``training_forward`` returns the masked LM loss."""

    def __init__(self, llava: nn.Module):
        super().__init__()
        self.llava = llava

    def train(self, mode: bool = True):
        super().train(mode)
        self.llava.model.vision_tower.eval()  # frozen: no dropout, whatever the loop asks
        return self

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Routes wrapper calls (DDP/DeepSpeed) to :meth:`training_forward`."""
        return self.training_forward(batch, generator)

    def training_forward(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        pixel_values = batch["pixel_values"]
        out = self.llava(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            pixel_values=pixel_values if pixel_values.shape[0] else None,
            use_cache=False,
        )
        return {"loss": out.loss}


def has_lora(llava: nn.Module) -> bool:
    return any("lora_" in n for n, _ in llava.named_parameters())


def add_lora(llava: nn.Module, st: StageConfig, seed: int = 0) -> None:
    """LoRA on every linear layer of the LM (LLaVA-1.5 LoRA: r 128, alpha 256).

    The adapters are drawn from their own seeded stream (as in :func:`enhance.stages.add_lora`): a
    run resumed after pretrain must start finetune from the same adapters as an uninterrupted one."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=st.lora_r,
        lora_alpha=st.lora_alpha,
        lora_dropout=st.lora_dropout,
        target_modules=list(st.lora_target_modules) or "all-linear",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        llava.model.language_model = get_peft_model(llava.model.language_model, cfg)


def merge_lora(llava: nn.Module) -> None:
    """Fold LoRA into the LM weights so the saved model is a plain ``LlavaForConditionalGeneration``."""
    lm = llava.model.language_model
    if hasattr(lm, "merge_and_unload"):
        llava.model.language_model = lm.merge_and_unload()


def configure_stage(llava: nn.Module, stage: str, st: StageConfig, seed: int = 0) -> list[dict]:
    """Set ``requires_grad`` for the stage (adding LoRA when asked) and return optimizer groups."""
    if st.trainable == "lora" and not has_lora(llava):
        add_lora(llava, st, seed)
    for p in llava.parameters():
        p.requires_grad_(False)
    projector = list(llava.model.multi_modal_projector.parameters())
    lm: list[nn.Parameter] = []
    if st.trainable == "full":
        lm = list(llava.model.language_model.parameters()) + list(llava.lm_head.parameters())
    elif st.trainable == "lora":
        lm = [p for n, p in llava.model.language_model.named_parameters() if "lora_" in n]
    for p in projector + lm:
        p.requires_grad_(True)
    groups = []
    if lm:
        groups.append({"params": lm, "lr": st.lr, "name": "language_model"})
    groups.append({"params": projector, "lr": st.projector_lr or st.lr, "name": "projector"})
    return groups


def trainable_state(task: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the trainable weights, keyed by their names in ``task``."""
    return {n: p.detach().cpu().contiguous() for n, p in task.named_parameters() if p.requires_grad}


def load_trainable_state(task: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(task.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise RuntimeError(f"checkpoint holds weights this model lacks: {missing[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
