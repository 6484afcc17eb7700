"""Condition projector h_omega: head structure, values by hand, local tokens, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from enhance.projector import ConditionProjector, select_local_tokens

G, P, C, L = 24, 32, 48, 20  # global, pooled, context, local widths (all different on purpose)


@pytest.fixture()
def proj() -> ConditionProjector:
    torch.manual_seed(0)
    return ConditionProjector(global_dim=G, pooled_dim=P, context_dim=C, local_dim=L).eval()


def _head_by_hand(head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    ln, lin1, _, lin2 = head
    y = F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)
    return F.linear(F.gelu(F.linear(y, lin1.weight, lin1.bias)), lin2.weight, lin2.bias)


def test_heads_are_layernorm_linear_gelu_linear(proj):
    for head, (d_in, d_out) in (
        (proj.pooled_head, (G, P)),
        (proj.context_head, (G, C)),
        (proj.local_head, (L, C)),
    ):
        kinds = [type(m) for m in head]
        assert kinds == [nn.LayerNorm, nn.Linear, nn.GELU, nn.Linear]
        assert head[0].normalized_shape == (d_in,)
        assert (head[1].in_features, head[1].out_features) == (d_in, d_out)
        assert (head[3].in_features, head[3].out_features) == (d_out, d_out)
    assert ConditionProjector(G).local_head is None  # local_dim=0: no local head
    no_pooled = ConditionProjector(G, pooled_dim=0, context_dim=C)  # the discrete Perceiver's layout
    assert no_pooled.pooled_head is None
    pooled, context = no_pooled(torch.randn(2, G))
    assert pooled is None and context.shape == (2, 1, C)
    assert isinstance(ConditionProjector(G, 8, 8, hidden_act="silu").pooled_head[2], nn.SiLU)


def test_output_shapes_and_values(proj):
    g = torch.randn(3, G)
    with torch.no_grad():
        pooled, context = proj(g)
    assert pooled.shape == (3, P) and context.shape == (3, 1, C)
    assert torch.allclose(pooled, _head_by_hand(proj.pooled_head, g), atol=1e-6)
    assert torch.allclose(context[:, 0], _head_by_hand(proj.context_head, g), atol=1e-6)


def test_paper_sizes():
    proj = ConditionProjector(global_dim=768)  # OpenAI ViT-L/14 global token
    pooled, context = proj(torch.randn(2, 768))
    assert pooled.shape == (2, 768) and context.shape == (2, 1, 4096)


def test_local_tokens_are_appended_after_the_global_token(proj):
    g, local = torch.randn(2, G), torch.randn(2, 5, L)
    with torch.no_grad():
        pooled, context = proj(g, local)
        pooled0, context0 = proj(g)
    assert context.shape == (2, 6, C)
    assert torch.equal(pooled, pooled0) and torch.equal(context[:, :1], context0)
    assert torch.allclose(context[:, 1:], _head_by_hand(proj.local_head, local), atol=1e-6)
    assert torch.equal(proj(g, local[:, :0])[1], context0)  # ratio 0: nothing appended


def test_local_tokens_need_a_local_head():
    with pytest.raises(ValueError, match="local_dim"):
        ConditionProjector(G)(torch.randn(1, G), torch.randn(1, 2, L))


@pytest.mark.parametrize(
    "ratio, expected",
    [
        (0.0, []),
        (0.5, [0, 2, 4, 6, 9, 11, 13, 15]),  # round(linspace(0, 15, 8))
        (1.0, list(range(16))),
        (0.125, [0, 15]),
    ],
)
def test_select_local_tokens(ratio, expected):
    tokens = torch.arange(16.0).view(1, 16, 1).expand(2, 16, 3)
    picked = select_local_tokens(tokens, ratio)
    assert picked.shape == (2, len(expected), 3)
    assert picked[0, :, 0].tolist() == expected
    assert torch.equal(picked[0], picked[1])


def test_save_and_load_round_trip(proj, tmp_path):
    with torch.no_grad():
        for p in proj.parameters():  # away from the init, so a silent re-init would show
            p.add_(torch.randn_like(p))
    proj.save_pretrained(tmp_path / "projector", safe_serialization=True)
    assert (tmp_path / "projector" / "config.json").is_file()
    back = ConditionProjector.from_pretrained(tmp_path / "projector").eval()
    arch = ("global_dim", "pooled_dim", "context_dim", "local_dim", "hidden_act")
    assert {k: back.config[k] for k in arch} == {
        "global_dim": G,
        "pooled_dim": P,
        "context_dim": C,
        "local_dim": L,
        "hidden_act": "gelu",
    }
    for (name, a), (_, b) in zip(proj.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    g, local = torch.randn(2, G), torch.randn(2, 4, L)
    with torch.no_grad():
        for x, y in zip(proj(g, local), back(g, local)):
            assert torch.equal(x, y)


def test_local_token_ablation_through_the_model(tiny_enhance_config, tiny_pixels):
    """backbone.local_token_ratio=0.5 (paper Fig. 1 iii): half of the 16 patch tokens join the context."""
    from enhance.train import build_model

    model = build_model(tiny_enhance_config("backbone.local_token_ratio=0.5"))
    assert model.projector.config.local_dim == model.backbone.local_dim == 32
    with torch.no_grad():
        pooled, context = model.condition(tiny_pixels["pixel_values"])
        out = model.backbone(tiny_pixels["pixel_values"])
    assert pooled.shape == (2, 32) and context.shape == (2, 1 + 8, 32)
    local = select_local_tokens(out.local_tokens, 0.5)
    with torch.no_grad():
        assert torch.allclose(context[:, 1:], model.projector.local_head(local), atol=1e-6)
