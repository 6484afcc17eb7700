"""The discrete denoiser: a lightweight Perceiver predicting masked VQ codes (paper Alg. 2).

No public code exists for it; this is our reading of Alg. 2 and Sec. 4.4:

* Each image is a grid of VQ code indices. A per-sample mask ratio r ~ U(0.5, 0.9) hides
  round(r * L) positions (at least one, never all).
* Encoder (``num_layers`` Perceiver blocks, paper default 6): the queries are the embeddings
  (code embedding + learned 2-D position) of the *unmasked* tokens; keys/values are the unmasked
  tokens concatenated with the condition tokens (the projected global token, plus local tokens
  in the ablation). Masked positions are excluded as keys, so they cannot leak their codes.
* Decoder (``decoder_layers`` blocks): for every position a query (mask embedding + position)
  cross-attends to the encoder's output c and the condition, and a linear head predicts the
  code; cross-entropy is taken on the masked positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def sample_mask(
    batch: int, length: int, ratio_range: tuple[float, float], generator: torch.Generator, device=None
) -> torch.Tensor:
    """Boolean [B, L], True where masked; the ratio is drawn per sample from U(lo, hi)."""
    lo, hi = ratio_range
    ratio = lo + (hi - lo) * torch.rand(batch, generator=generator, device=device)
    n_mask = (ratio * length).round().long().clamp(1, length - 1)
    order = torch.rand(batch, length, generator=generator, device=device).argsort(dim=1)
    ranks = order.argsort(dim=1)  # rank of each position in a random permutation
    return ranks < n_mask[:, None]


class _Block(nn.Module):
    """Pre-norm cross-attention (queries over keys/values) + MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, kv_keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(kv)).view(b, kv.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=kv_keep[:, None, None, :])
        x = x + self.out(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm_mlp(x))


class PerceiverDenoiser(ModelMixin, ConfigMixin):
    """Masked-code predictor conditioned on the tower's global token.

    Args:
        codebook_size (`int`): number of VQ codes.
        grid_size (`int`): codes per side (L = grid_size**2 positions).
        hidden_size (`int`, defaults to 1024): width of tokens and condition.
        num_layers (`int`, defaults to 6): encoder blocks (paper default; Table 5 ablates 2-8).
        num_heads (`int`, defaults to 16): attention heads.
        decoder_layers (`int`, defaults to 1): blocks reading out the masked positions.
        mlp_ratio (`float`, defaults to 4.0): MLP width / hidden size.
    """

    @register_to_config
    def __init__(
        self,
        codebook_size: int,
        grid_size: int,
        hidden_size: int = 1024,
        num_layers: int = 6,
        num_heads: int = 16,
        decoder_layers: int = 1,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.code_embed = nn.Embedding(codebook_size, hidden_size)
        self.mask_embed = nn.Parameter(torch.zeros(hidden_size))
        self.row_embed = nn.Parameter(torch.randn(grid_size, hidden_size) * 0.02)
        self.col_embed = nn.Parameter(torch.randn(grid_size, hidden_size) * 0.02)
        self.encoder = nn.ModuleList(_Block(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.decoder = nn.ModuleList(_Block(hidden_size, num_heads, mlp_ratio) for _ in range(decoder_layers))
        self.norm_out = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, codebook_size)

    def positions(self) -> torch.Tensor:
        g = self.config.grid_size
        return (self.row_embed[:, None, :] + self.col_embed[None, :, :]).reshape(g * g, -1)

    def forward(self, codes: torch.Tensor, masked: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``codes`` [B, L] long, ``masked`` [B, L] bool, ``condition`` [B, K, H] -> logits [B, L, V].

        The codes at masked positions are never read (they may hold anything)."""
        pos = self.positions()
        x = self.code_embed(codes.masked_fill(masked, 0)) + pos
        b, k = condition.shape[0], condition.shape[1]
        cond_keep = torch.ones(b, k, dtype=torch.bool, device=codes.device)
        keep = torch.cat([~masked, cond_keep], dim=1)  # masked tokens are never keys
        for block in self.encoder:  # queries at masked positions are computed but never used
            x = block(x, torch.cat([x, condition], dim=1), keep)
        queries = (self.mask_embed + pos).expand(b, -1, -1)
        memory = torch.cat([x, condition], dim=1)
        for block in self.decoder:
            queries = block(queries, memory, keep)
        return self.head(self.norm_out(queries))


def masked_cross_entropy(logits: torch.Tensor, codes: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over masked positions only (float32)."""
    return F.cross_entropy(logits[masked].float(), codes[masked])


def masked_accuracy(logits: torch.Tensor, codes: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    return (logits[masked].argmax(-1) == codes[masked]).float().mean()
