"""The two LLaVA-1.5 stages as tasks for the loop of ``genhancer.runtime.trainer``.

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

    def __init__(
        self, llava: nn.Module, vision_every_step: bool = False, autocast_dtype: torch.dtype | None = None
    ):
        super().__init__()
        self.llava = llava
        # Half-precision weights with fp32 trainable copies (keep_trainable_fp32) need autocast to mix
        # in one forward; accelerate's own autocast is off on CPU, so the task sets it itself.
        self.autocast_dtype = autocast_dtype
        # DeepSpeed ZeRO-3 gathers a module's partitioned weights on forward and reduce-scatters its
        # gradients on backward, both collectives: every rank must run the tower and the projector on
        # every micro-batch, a text-only one too, or the ranks deadlock (upstream LLaVA feeds such
        # samples a zero image for the same reason). See training_forward.
        self.vision_every_step = vision_every_step

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
        if self.autocast_dtype is None:
            return self._forward(batch)
        with torch.autocast(batch["input_ids"].device.type, dtype=self.autocast_dtype):
            return self._forward(batch)

    def _forward(self, batch: dict) -> dict[str, torch.Tensor]:
        pixel_values = batch["pixel_values"]
        if self.vision_every_step and not pixel_values.shape[0]:
            return {"loss": self._text_only_through_vision(batch)}
        out = self.llava(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            pixel_values=pixel_values if pixel_values.shape[0] else None,
            use_cache=False,
        )
        return {"loss": out.loss}

    def _text_only_through_vision(self, batch: dict) -> torch.Tensor:
        """The loss of a text-only micro-batch, with the tower and projector run on a blank image
        right after the token embedding, where an image micro-batch runs them: ZeRO-3 fetches (and
        prefetches) partitioned weights along the module order it traced, which must match across
        ranks. The blank's features join the graph with weight 0: same loss, zero gradients."""
        config = self.llava.config
        size = config.vision_config.image_size
        dtype = next(self.llava.model.multi_modal_projector.parameters()).dtype

        def through_vision(module, args, embeds):
            blank = torch.zeros(1, 3, size, size, device=embeds.device, dtype=dtype)
            features = self.llava.model.get_image_features(
                pixel_values=blank,
                vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            ).pooler_output
            return embeds + 0.0 * sum(f.sum() for f in features).to(embeds.dtype)

        handle = self.llava.get_input_embeddings().register_forward_hook(through_vision)
        try:
            out = self.llava(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
                use_cache=False,
            )
        finally:
            handle.remove()
        return out.loss


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


def keep_trainable_fp32(module: nn.Module) -> int:
    """Cast trainable half-precision parameters to fp32 in place; returns how many values were cast.

    A plain optimizer updates parameters in their own dtype: an Adam step of about ``lr`` (2e-5 in
    finetuning) is below half a bf16 spacing for any weight above ~0.005 in magnitude, so bf16
    weights would mostly not move. DeepSpeed keeps fp32 master copies itself; elsewhere the
    trainable weights stay fp32 and the forward runs under autocast (:class:`LlavaTask`)."""
    cast = 0
    for p in module.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
            cast += p.numel()
    return cast


def cast_floating(module: nn.Module, dtype: torch.dtype) -> None:
    """Every floating parameter to ``dtype`` (the saved model keeps the dtype it was loaded in)."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


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
