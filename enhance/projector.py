"""Condition projector h_omega: maps the tower's global token into FLUX's two condition slots."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _head(in_dim: int, out_dim: int, act: str) -> nn.Sequential:
    acts = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}
    return nn.Sequential(
        nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), acts[act](), nn.Linear(out_dim, out_dim)
    )


class ConditionProjector(ModelMixin, ConfigMixin):
    """Two heads, each ``LayerNorm -> Linear(D, H) -> act -> Linear(H, H)`` (the official projector).

    The pooled head feeds FLUX's pooled vector ``y``; the context head produces the single context
    token the double blocks attend to. With the local-token ablation (paper Fig. 1 iii), a third
    head maps the chosen patch tokens into the same context space.

    Args:
        global_dim (`int`): width of the tower's global token (768 for OpenAI ViT-L/14).
        pooled_dim (`int`, defaults to 768): FLUX ``pooled_projection_dim``; 0 disables the pooled
            head (the discrete Perceiver has no pooled slot).
        context_dim (`int`, defaults to 4096): FLUX ``joint_attention_dim``.
        local_dim (`int`, defaults to 0): width of local tokens; 0 disables the local head.
        hidden_act (`str`, defaults to `"gelu"`): activation inside each head.
    """

    @register_to_config
    def __init__(
        self,
        global_dim: int,
        pooled_dim: int = 768,
        context_dim: int = 4096,
        local_dim: int = 0,
        hidden_act: str = "gelu",
    ):
        super().__init__()
        self.pooled_head = _head(global_dim, pooled_dim, hidden_act) if pooled_dim else None
        self.context_head = _head(global_dim, context_dim, hidden_act)
        self.local_head = _head(local_dim, context_dim, hidden_act) if local_dim else None

    def forward(
        self, global_token: torch.Tensor, local_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return ``(pooled [B, P] or None, context [B, 1 + K, C])``."""
        pooled = self.pooled_head(global_token) if self.pooled_head is not None else None
        context = self.context_head(global_token).unsqueeze(1)
        if local_tokens is not None and local_tokens.shape[1] > 0:
            if self.local_head is None:
                raise ValueError("local tokens given but the projector has no local head (local_dim=0)")
            context = torch.cat([context, self.local_head(local_tokens)], dim=1)
        return pooled, context


def select_local_tokens(local_tokens: torch.Tensor, ratio: float) -> torch.Tensor:
    """Evenly spaced ``ratio`` of the patch tokens (deterministic, so runs are reproducible)."""
    n = local_tokens.shape[1]
    k = int(round(ratio * n))
    if k <= 0:
        return local_tokens[:, :0]
    idx = torch.linspace(0, n - 1, k, device=local_tokens.device).round().long()
    return local_tokens[:, idx]
