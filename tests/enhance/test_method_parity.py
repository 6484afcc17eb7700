"""Our DCR and DIVA losses against the official repositories' loss bodies, on the same tensors.

The two ``official_*`` functions transcribe the loss code of ``boyuh/DCR``
(``train_OpenAICLIP_stage2.py``, the body inside ``accelerator.accumulate``) and
``baaivision/DIVA`` (``models/SD_with_OpenAICLIP.py``: ``forward`` and ``_unet_pred_noise``, and the
token selection of ``condition/OpenAICLIP_for_clip_model.py``), keeping their tensor operations and
order; only the models are replaced by a tiny random ``UNet2DConditionModel`` in float32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from enhance.denoisers.sd import SDDenoiser
from enhance.methods.dcr.config import DCRSection
from enhance.methods.dcr.model import DCRModel, dcr_loss
from enhance.methods.diva.config import DivaSection
from enhance.methods.diva.model import DivaModel
from enhance.methods.sd_models import TokenProjector

H = 32  # cross-attention width of the tiny UNet
L = 7  # text length


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=H,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def official_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.0120,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )


def official_dcr_loss(unet, noise_scheduler, x_1, noise, t, vec, vec_plus) -> torch.Tensor:
    """boyuh/DCR train_OpenAICLIP_stage2.py, from ``noisy_latents = ...`` to ``loss.mean()``."""
    bs = x_1.shape[0]
    noisy_latents = noise_scheduler.add_noise(x_1, noise, t)
    model_pred = unet(
        noisy_latents[:, None].repeat(1, bs, 1, 1, 1).reshape(bs * bs, *noisy_latents.shape[1:]),
        t[:, None].repeat(1, bs).reshape(bs * bs),
        encoder_hidden_states=vec[None].repeat(bs, 1, 1, 1).reshape(bs * bs, vec.shape[1], vec.shape[2]),
    ).sample.reshape(bs, bs, *noisy_latents.shape[1:])
    model_pred_plus = unet(noisy_latents, t, encoder_hidden_states=vec_plus).sample
    target_v = noise_scheduler.get_velocity(x_1, noise, t)
    tau = 0.1
    anchor_pred = model_pred[torch.arange(bs), torch.arange(bs)]
    anchor_vec = F.normalize(anchor_pred.flatten(1), dim=1)
    gt_vec = F.normalize(target_v.flatten(1), dim=1)
    pos_plus_vec = F.normalize(model_pred_plus.flatten(1), dim=1)
    all_vec = F.normalize(model_pred.reshape(bs, bs, -1), dim=2)
    sim_anchor_all = torch.einsum("bd,bkd->bk", anchor_vec, all_vec)
    logits_all = sim_anchor_all / tau
    neg_mask = ~torch.eye(bs, dtype=torch.bool, device=logits_all.device)
    neg_logit = logits_all.masked_fill(~neg_mask, float("-inf"))
    logits_pos_pred = (anchor_vec * pos_plus_vec).sum(dim=1) / tau
    logits_pos_gt = (anchor_vec * gt_vec).sum(dim=1) / tau
    denom = torch.exp(logits_pos_pred) + torch.exp(logits_pos_gt) + torch.exp(neg_logit).sum(dim=1)
    loss_pos_pred = -torch.log(torch.exp(logits_pos_pred) / denom)
    loss_pos_gt = -torch.log(torch.exp(logits_pos_gt) / denom)
    loss = 0.5 * (loss_pos_pred + loss_pos_gt)
    return loss.mean()


def _dcr_inputs(bs: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x_1 = torch.randn(bs, 4, 8, 8, generator=g)
    noise = torch.randn(bs, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (bs,), generator=g)
    uc = torch.randn(L, H, generator=g)  # the empty-prompt embedding
    proj = torch.randn(bs, H, generator=g)
    proj_plus = proj + 0.3 * torch.randn(bs, H, generator=g)
    vec = proj.unsqueeze(1).expand(-1, L, -1) + uc  # CLIP_bank.OpenAICLIP.forward
    vec_plus = proj_plus.unsqueeze(1).expand(-1, L, -1) + uc
    return x_1, noise, t, vec, vec_plus


def _dcr_model(unet, **dcr):
    section = DCRSection(
        **{"temperature": 0.1, "negatives": "exact", "num_negatives": 3, "unet_chunk": 0, **dcr}
    )
    denoiser = SDDenoiser(unet, official_scheduler(), "v_prediction")
    return DCRModel(
        backbone=None,
        projector=None,
        denoiser=denoiser,
        codec=None,
        text_context=torch.zeros(L, H),
        section=section,
    )


def _ours(model, x_1, noise, t, vec, vec_plus, seed=0):
    z_t = model.denoiser.add_noise(x_1, noise, t)
    return model.objective(x_1, noise, t, z_t, vec, vec_plus, torch.Generator().manual_seed(seed))


def test_dcr_loss_matches_the_official_body():
    unet = tiny_unet()
    inputs = _dcr_inputs()
    with torch.no_grad():
        official = official_dcr_loss(unet, official_scheduler(), *inputs)
        ours = _ours(_dcr_model(unet), *inputs)
    assert torch.isfinite(official)
    assert abs(float(ours) - float(official)) < 1e-5


def test_dcr_gradients_match_the_official_body():
    """The gradient w.r.t. the conditions (what reaches the projector and the tower)."""
    unet = tiny_unet()
    x_1, noise, t, vec, vec_plus = _dcr_inputs(bs=4, seed=3)
    grads = []
    for fn in (
        lambda v, vp: official_dcr_loss(unet, official_scheduler(), x_1, noise, t, v, vp),
        lambda v, vp: _ours(_dcr_model(unet), x_1, noise, t, v, vp),
    ):
        v, vp = vec.clone().requires_grad_(True), vec_plus.clone().requires_grad_(True)
        fn(v, vp).backward()
        grads.append(torch.cat([v.grad.flatten(), vp.grad.flatten()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


def test_dcr_chunked_and_sampled_with_all_negatives_equal_exact():
    unet = tiny_unet()
    inputs = _dcr_inputs(bs=4, seed=5)
    with torch.no_grad():
        exact = _ours(_dcr_model(unet), *inputs)
        chunked = _ours(_dcr_model(unet, unet_chunk=3), *inputs)
        sampled_all = _ours(_dcr_model(unet, negatives="sampled", num_negatives=3), *inputs)
        sampled_one = _ours(_dcr_model(unet, negatives="sampled", num_negatives=1), *inputs)
    assert abs(float(chunked) - float(exact)) < 1e-5
    assert abs(float(sampled_all) - float(exact)) < 1e-5
    # Fewer negatives: a smaller denominator, so a lower loss (the measured gap is in the README).
    assert float(sampled_one) < float(exact)


def test_dcr_unet_calls_count_the_official_cost():
    model = _dcr_model(tiny_unet())
    assert model.unet_calls(16) == 16 * 16 + 16
    assert _dcr_model(tiny_unet(), negatives="sampled", num_negatives=3).unet_calls(16) == 16 * 4 + 16


def test_dcr_loss_is_log_of_three_for_identical_predictions():
    """Hand-computed: anchor, positives and negatives all equal -> log(2 + K) - 0."""
    a = torch.ones(2, 3)
    loss = dcr_loss(a, torch.ones(2, 4, 3), a, a, temperature=0.1)
    assert abs(float(loss) - float(torch.log(torch.tensor(6.0)))) < 1e-6


# --- DIVA ----------------------------------------------------------------------------------------


def official_diva_loss(unet, scheduler, latent, image_tokens, text_emb, visual_proj, timesteps, noise, idx):
    """baaivision/DIVA: the OpenAI-CLIP token selection ([CLS] + 76 random patch tokens, here the
    given ``idx``), ``context = probs * class_text_embeddings + visual_proj(image_features)`` with
    the single empty class (probs = 1), ``_unet_pred_noise`` and the MSE against the noise."""
    x = image_tokens
    class_token = x[:, 0, :].unsqueeze(1)
    remaining_tokens = x[:, 1:, :]
    num_seleted_tokens = idx.shape[1]
    batch_indices = torch.arange(x.shape[0]).unsqueeze(1).expand(x.shape[0], num_seleted_tokens)
    selected_tokens = remaining_tokens[batch_indices, idx]
    image_features = torch.cat((class_token, selected_tokens), dim=1)
    real_bs = latent.shape[0]
    probs = torch.ones(real_bs, 1)[:, :, None, None]
    class_text_embeddings = text_emb[None].unsqueeze(0).repeat(real_bs, 1, 1, 1)
    probs = probs.unsqueeze(1).repeat(1, 1, 1, 1, 1).reshape(-1, 1, 1, 1)
    context = (probs * class_text_embeddings).sum(1)
    context = context + visual_proj(image_features)
    _, c, h, w = latent.shape
    alphas_cumprod = scheduler.alphas_cumprod
    t = timesteps
    noised_latent = latent * (alphas_cumprod[t] ** 0.5).view(-1, 1, 1, 1) + noise * (
        (1 - alphas_cumprod[t]) ** 0.5
    ).view(-1, 1, 1, 1)
    pred_noise = unet(noised_latent, t, encoder_hidden_states=context.expand(real_bs, -1, -1)).sample
    return torch.nn.functional.mse_loss(pred_noise.float(), noise)


class _Tokens(torch.nn.Module):
    def __init__(self, tokens):
        super().__init__()
        self.tokens = tokens

    def joint_tokens(self, pixel_values):
        return self.tokens


@pytest.mark.parametrize("seed", [0, 1])
def test_diva_loss_matches_the_official_body(seed):
    unet = tiny_unet()
    g = torch.Generator().manual_seed(seed)
    b, n, d = 3, 16, 12
    tokens = torch.randn(b, 1 + n, d, generator=g)
    text = torch.randn(L, H, generator=g)
    latent = torch.randn(b, 4, 8, 8, generator=g)
    torch.manual_seed(seed)
    proj = TokenProjector(d, H, mlp=False)
    diva = DivaSection(tokens="random_local", num_tokens=L, text="full", avg_window=6, draws=1)
    model = DivaModel(
        backbone=_Tokens(tokens),
        projector=proj,
        denoiser=SDDenoiser(unet, official_scheduler(), "epsilon"),
        codec=None,
        text_context=text,
        section=diva,
    )
    # our draw order: t, noise (SDMethodModel.draw), then the token indices (DivaModel.tokens)
    gen = torch.Generator().manual_seed(10 + seed)
    t, noise, z_t = model.draw(latent, gen)
    context = model.condition(None, gen)
    ours = F.mse_loss(model.denoiser(z_t, t, context), model.denoiser.target(latent, noise, t))
    replay = torch.Generator().manual_seed(10 + seed)
    t2 = torch.randint(0, 1000, (b,), generator=replay)
    noise2 = torch.randn(latent.shape, generator=replay)
    idx = torch.randint(0, n, (b, L - 1), generator=replay)
    official = official_diva_loss(unet, official_scheduler(), latent, tokens, text, proj.net, t2, noise2, idx)
    assert abs(float(ours) - float(official)) < 1e-5
