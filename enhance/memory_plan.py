"""``enhance --describe``'s memory plan: GenHancer's stages at the configured size, per GPU.

Activations are measured on a real-width slice (see :mod:`genhancer.runtime.memory`): the FLUX
denoiser with one double and one single block at the configured width and token count, and one
encoder layer of the vision tower at its real width with stage 2's LoRA, each at micro-batches 1
and 2 under the configured autocast dtype. Per-block bytes are scaled by the configured depth; the
FLUX embedders and output layer count once. The VAE encodes under ``no_grad`` and the stage-1
tower is frozen with no gradient reaching it, so neither keeps activations. With
``perf.gradient_checkpointing`` a checkpointed block keeps only its inputs, plus the largest block
re-run during backward.

Frozen-SD methods (DIVA, DCR, naive) are planned from their parameter counts only: their UNet
activations are not measured here (``activations_source`` says so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from enhance.architectures import sd_unet_config, tower_vision
from enhance.denoisers.continuous import flux_kwargs
from enhance.denoisers.discrete import PerceiverDenoiser, masked_cross_entropy
from enhance.methods import get_method
from genhancer.runtime import memory
from genhancer.runtime.memory import Activations, Part, Setup
from genhancer.toyworld.models import TINY_CLIP_RECIPE, TINY_SD_RECIPE, tiny_sd_unet_config

#: Text towers of the paper backbones (their config.json), for the frozen-weight count.
TEXT_TOWERS = {
    "clip": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    "clip-h": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
    },
    "siglip": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
    },
}
#: FLUX.1 autoencoder parameters (diffusers AutoencoderKL at FLUX's config).
FLUX_VAE_PARAMS = 83_819_683
#: The paper's Table 7 row: GenHancer stage 2 on the 1.31 B denoiser, per-device batch 2.
PAPER_TABLE7 = {"stage": 2, "micro_batch": 2, "memory_gb": 13.07, "denoiser_params_b": 1.31}

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _init(module: nn.Module) -> nn.Module:
    """A module built on the meta device, materialised on the CPU with small random weights (the
    byte counts do not depend on the values; skipping the default init saves seconds)."""
    module = module.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02, generator=gen)
        for b in module.buffers():
            if b.is_floating_point():
                b.zero_()
    return module


class _InputBytes:
    """Per-module bytes of the tensors a block is called with (what checkpointing keeps)."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.bytes: dict[str, int] = {}
        self.handles = [
            m.register_forward_pre_hook(lambda mod, a, kw, t=tag: self._add(t, a, kw), with_kwargs=True)
            for tag, m in modules.items()
        ]

    def _add(self, tag: str, args: tuple, kwargs: dict) -> None:
        values = list(args) + list(kwargs.values())
        n = sum(v.nbytes for v in values if torch.is_tensor(v) and v.is_floating_point() and v.dim() >= 2)
        self.bytes[tag] = self.bytes.get(tag, 0) + n

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _measure(build, run, tags_of, precision: str, trainable: bool | Callable[[str], bool]) -> dict[str, Any]:
    """Saved and block-input bytes by tag at micro-batches 1 and 2 -> per sample and fixed;
    ``trainable``: whether the weights train, or which (by parameter name)."""
    model = _init(build())
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name) if callable(trainable) else trainable)
    tags = tags_of(model)
    results = {}
    for batch in (1, 2):
        inputs = _InputBytes(tags)
        with torch.autocast(
            "cpu", dtype=_DTYPES.get(precision, torch.bfloat16), enabled=precision in _DTYPES
        ):
            with memory.saved_bytes(model.parameters(), tags) as saved:
                out = run(model, batch)
        del out
        inputs.remove()
        results[batch] = (saved, inputs.bytes)
    per_tag = {}
    for tag in set(results[1][0].by_tag) | set(results[2][0].by_tag):
        slope, fixed = memory.slope_and_fixed(
            results[1][0].by_tag.get(tag, 0), results[2][0].by_tag.get(tag, 0)
        )
        in_slope, _ = memory.slope_and_fixed(results[1][1].get(tag, 0), results[2][1].get(tag, 0))
        per_tag[tag] = {"per_sample": slope, "fixed": fixed, "inputs_per_sample": in_slope}
    return per_tag


def flux_slice(
    d: Any, latent_channels: int, image_size: int, text_tokens: int, precision: str, trainable: bool
):
    """Measured bytes of the FLUX denoiser at the configured width: tags ``double``, ``single``
    (one block each) and ``other`` (embedders, output norm and projection)."""
    from diffusers import FluxTransformer2DModel

    side = image_size // 16  # VAE /8, packed 2x2
    kwargs = flux_kwargs(d, latent_channels) | {"num_layers": 1, "num_single_layers": 1}

    def build():
        with torch.device("meta"):
            return FluxTransformer2DModel(**kwargs)

    def run(model, b):
        hidden = torch.randn(b, side * side, 4 * latent_channels, requires_grad=True)
        context = torch.randn(b, text_tokens, d.joint_attention_dim, requires_grad=True)
        pooled = torch.randn(b, d.pooled_projection_dim, requires_grad=True)
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
        out = model(
            hidden_states=hidden,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=torch.full((b,), 0.5),
            img_ids=img_ids,
            txt_ids=torch.zeros(text_tokens, 3),
            guidance=torch.full((b,), 4.0) if d.guidance_embeds else None,
            return_dict=False,
        )[0]
        return (out.float() - hidden.detach()).pow(2).mean()  # the flow loss's shape

    def tags(model):
        return {"double": model.transformer_blocks[0], "single": model.single_transformer_blocks[0]}

    return _measure(build, run, tags, precision, trainable)


def tower_layer_slice(kind: str, vision: dict, lora: Any, precision: str, full: bool = False):
    """Measured bytes of one encoder layer of the tower at real width with stage 2's LoRA (base
    frozen, adapters training, the gradient flowing on to the layers below)."""
    from peft import LoraConfig, inject_adapter_in_model

    if kind == "siglip":
        from transformers import SiglipVisionConfig as Config
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer as Layer
    else:
        from transformers import CLIPVisionConfig as Config
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer as Layer
    config = Config(**vision, attn_implementation="sdpa")
    seq = (vision["image_size"] // vision["patch_size"]) ** 2 + (0 if kind == "siglip" else 1)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Layer(config)

    def build():
        with torch.device("meta"):
            model = Wrapped()
        if full:  # stage2.tower_tuning=full: every weight trains, no adapters
            return model
        targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
        cfg = LoraConfig(
            r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout, target_modules=targets
        )
        return inject_adapter_in_model(cfg, model)

    def run(model, b):
        x = torch.randn(b, seq, vision["hidden_size"], requires_grad=True)
        out = model.layer(x, None)
        out = out[0] if isinstance(out, tuple) else out
        return out.float().sum()

    def tags(model):
        return {"tower_layer": model.layer}

    trainable = (lambda name: True) if full else (lambda name: "lora_" in name)
    return _measure(build, run, tags, precision, trainable), seq


def _tower_measurement(
    cfg: Any, vision: tuple[str, dict] | None, precision: str, full: bool = False
) -> dict[str, Any] | None:
    """One tower layer as stage 2 trains it (with its LoRA, or every weight when ``full``),
    measured once per configuration and cached; None when the tower is not known offline."""
    if vision is None:
        return None
    kind, v = vision
    s2 = cfg.stage2
    key = {
        "slice": "tower",
        "torch": torch.__version__.split("+")[0],
        "kind": kind,
        "vision": v,
        "precision": precision,
        "r": s2.lora_r,
        "alpha": s2.lora_alpha,
        "dropout": s2.lora_dropout,
    }
    if full:
        key["full"] = True
    return memory.cached_measurement(key, lambda: tower_layer_slice(kind, v, s2, precision, full=full)[0])


def _count(parts: dict[str, Any], name: str) -> int:
    """A parameter count from ``--describe``'s table (0 where it is a note, not a number)."""
    value = parts.get(name)
    return value if isinstance(value, int) else 0


def plan_stages(
    cfg: Any,
    parts: dict[str, Any],
    vision: tuple[str, dict] | None,
    setup: Setup,
    described_method: dict | None = None,
) -> dict[str, Any]:
    """The plan of each stage the run trains, at the configured micro-batch, plus the paper's
    Table 7 figure beside stage 2's row at micro-batch 2."""
    method = cfg.method
    d = getattr(method, "denoiser", None) or getattr(cfg, "denoiser", None)
    vae = getattr(method, "vae", None) or getattr(cfg, "vae", None)
    precision = cfg.train.mixed_precision
    if getattr(method, "sd", None) is not None and d is None:
        return plan_sd_stages(cfg, parts, vision, setup, described_method or {})
    if d is not None and getattr(d, "kind", "continuous") == "discrete":
        return plan_discrete_stages(cfg, parts, vision, setup)
    if d is None:
        return {"note": "memory plan: this method's denoiser is not measured"}
    denoiser_params = parts.get("denoiser")
    projector_params = parts.get("projector")
    if not isinstance(denoiser_params, int) or not isinstance(projector_params, int):
        return {"note": "memory plan needs the parameter counts (the backbone is not known offline)"}
    text_tokens = 1
    if vision is not None and cfg.backbone.local_token_ratio > 0:
        kind, v = vision
        patches = (v["image_size"] // v["patch_size"]) ** 2
        text_tokens += round(cfg.backbone.local_token_ratio * patches)
    image_size = cfg.backbone.image_size
    torch_version = torch.__version__.split("+")[0]
    key = {
        "slice": "flux",
        "torch": torch_version,
        "denoiser": {
            k: getattr(d, k)
            for k in (
                "num_attention_heads",
                "attention_head_dim",
                "joint_attention_dim",
                "pooled_projection_dim",
                "guidance_embeds",
            )
        },
        "axes": list(d.axes_dims_rope),
        "latent_channels": vae.latent_channels,
        "image_size": image_size,
        "text_tokens": text_tokens,
        "precision": precision,
    }
    flux = {}
    for trainable in (True, False):
        flux[trainable] = memory.cached_measurement(
            key | {"trainable": trainable},
            lambda t=trainable: flux_slice(d, vae.latent_channels, image_size, text_tokens, precision, t),
        )
    tower = _tower_measurement(cfg, vision, precision)

    tower_total = parts.get("tower_total")
    vae_dtype = "bfloat16" if cfg.perf.vae_dtype in ("auto", "bfloat16") else "float32"
    gc = cfg.perf.gradient_checkpointing
    lora, bias = _count(parts, "lora"), _count(parts, "tower_bias")

    def stage_plan(stage: int, variant: str, batch: int) -> dict[str, Any]:
        denoiser_trains = stage == 1 or variant == "stage2_all"
        plan_parts = [
            Part("denoiser", denoiser_params, denoiser_params if denoiser_trains else 0),
            Part("projector", projector_params, projector_params if denoiser_trains else 0),
            Part("vae", FLUX_VAE_PARAMS, 0, vae_dtype),
        ]
        if isinstance(tower_total, int):  # fp32 tower; stage 2 trains its LoRA and biases
            plan_parts.append(Part("tower", tower_total + lora, (lora + bias) if stage == 2 else 0))
        acts = _activations(flux[denoiser_trains], d, tower if stage == 2 else None, vision, gc)
        st = getattr(cfg, f"stage{stage}")
        stage_setup = Setup(**{**memory.setup_dict(setup), "optimizer": st.optimizer})
        row = memory.plan(plan_parts, acts, batch, stage_setup)
        row["other_setups"] = memory.alternatives(plan_parts, acts, batch, stage_setup)
        return row

    out: dict[str, Any] = {"setup": setup.label(), "gradient_checkpointing": gc}
    variant = cfg.stage2.variant
    for stage in cfg.train.stages:
        row = stage_plan(stage, variant, getattr(cfg, f"stage{stage}").per_device_batch_size)
        if stage == 2:
            row["variant"] = variant
        if stage == PAPER_TABLE7["stage"] and denoiser_params > 1e9:  # the paper's row: the real denoiser
            b = PAPER_TABLE7["micro_batch"]
            row["paper_table7"] = {
                "micro_batch": b,
                "paper_gb": PAPER_TABLE7["memory_gb"],
                "ours_gib": {v: stage_plan(2, v, b)["total_gib"] for v in ("stage2_only", "stage2_all")},
                "note": f"ours includes {setup.overhead_gib} GiB of CUDA context/workspace; the paper "
                "does not say which variant, ZeRO stage or counter its figure uses",
            }
        out[f"stage{stage}"] = row
    return out


def perceiver_slice(d: Any, precision: str, trainable: bool):
    """Measured bytes of the discrete denoiser at the configured width: tags ``encoder`` and
    ``decoder`` (one Perceiver block each) over the code grid, with the masked-code loss."""

    def build():
        with torch.device("meta"):
            return PerceiverDenoiser(
                d.codebook_size, d.token_grid, d.perceiver_hidden, 1, d.perceiver_heads, 1
            )

    def run(model, b):
        n = d.token_grid * d.token_grid
        codes = torch.randint(0, d.codebook_size, (b, n))
        masked = torch.rand(b, n) < sum(d.mask_ratio) / 2
        condition = torch.randn(b, 1, d.perceiver_hidden, requires_grad=True)
        return masked_cross_entropy(model(codes, masked, condition), codes, masked)

    def tags(model):
        return {"encoder": model.encoder[0], "decoder": model.decoder[0]}

    return _measure(build, run, tags, precision, trainable)


def plan_discrete_stages(
    cfg: Any, parts: dict[str, Any], vision: tuple[str, dict] | None, setup: Setup
) -> dict:
    """GenHancer's discrete denoiser: one encoder and one decoder Perceiver block measured at the
    real width and code grid, scaled by depth; the frozen VQ tokenizer is not counted (its size is
    not known offline) and says so."""
    d = cfg.method.denoiser
    denoiser_params, projector_params = parts.get("denoiser"), parts.get("projector")
    if not isinstance(denoiser_params, int) or not isinstance(projector_params, int):
        return {"note": "memory plan needs the parameter counts (set codebook_size and token_grid)"}
    precision = cfg.train.mixed_precision
    key = {
        "slice": "perceiver",
        "torch": torch.__version__.split("+")[0],
        "denoiser": [
            d.codebook_size,
            d.token_grid,
            d.perceiver_hidden,
            d.perceiver_heads,
            list(d.mask_ratio),
        ],
        "precision": precision,
    }
    perceiver = {
        t: memory.cached_measurement(key | {"trainable": t}, lambda t=t: perceiver_slice(d, precision, t))
        for t in (True, False)
    }
    tower = _tower_measurement(cfg, vision, precision)
    tower_total = parts.get("tower_total")
    lora, bias = _count(parts, "lora"), _count(parts, "tower_bias")
    gc = cfg.perf.gradient_checkpointing
    out: dict[str, Any] = {"setup": setup.label(), "gradient_checkpointing": gc}
    for stage in cfg.train.stages:
        trains = stage == 1 or cfg.stage2.variant == "stage2_all"
        plan_parts = [
            Part("denoiser", denoiser_params, denoiser_params if trains else 0),
            Part("projector", projector_params, projector_params if trains else 0),
        ]
        if isinstance(tower_total, int):
            plan_parts.append(Part("tower", tower_total + lora, (lora + bias) if stage == 2 else 0))
        depth = {"encoder": d.num_layers, "decoder": d.decoder_layers}
        acts = _activations(perceiver[trains], d, tower if stage == 2 else None, vision, gc, depth)
        st = getattr(cfg, f"stage{stage}")
        stage_setup = Setup(**{**memory.setup_dict(setup), "optimizer": st.optimizer})
        row = memory.plan(plan_parts, acts, st.per_device_batch_size, stage_setup)
        row["other_setups"] = memory.alternatives(plan_parts, acts, st.per_device_batch_size, stage_setup)
        row["not_counted"] = (
            "the frozen VQ tokenizer's weights and activations (its size is not known offline)"
        )
        out[f"stage{stage}"] = row
    return out


def _activations(
    flux: dict, d: Any, tower: dict | None, vision, gc: bool, depth: dict[str, int] | None = None
) -> Activations:
    """Scale the measured slices by depth (checkpointing: inputs per block + one block re-run)."""

    def block(tag_bytes: dict, n: int) -> tuple[float, float]:
        if not gc:
            return tag_bytes["per_sample"] * n, tag_bytes["fixed"] * n
        return tag_bytes["inputs_per_sample"] * n + tag_bytes["per_sample"], tag_bytes["fixed"]

    by_part: dict[str, float] = {}
    fixed = 0.0
    depth = depth or {"double": d.num_layers, "single": d.num_single_layers}
    for tag, n in depth.items():
        if tag in flux and n:
            ps, fx = block(flux[tag], n)
            by_part[f"denoiser_{tag}_blocks"] = ps
            fixed += fx
    other = flux.get("other", {"per_sample": 0, "fixed": 0})
    by_part["denoiser_other"] = other["per_sample"]
    fixed += other["fixed"]
    source = f"measured: 1 block each of {', '.join(depth)} at real width"
    if tower is not None and vision is not None:
        layers = vision[1]["num_hidden_layers"]
        ps, fx = block(tower["tower_layer"], layers)
        by_part["tower_layers"] = ps
        fixed += fx
        source += f"; 1 tower layer with LoRA x {layers}"
    if gc:
        source += "; checkpointed (block inputs x depth + one block)"
    source += " (saved-tensor bytes at micro-batch 1 and 2, CPU autocast)"
    return Activations(per_sample=sum(by_part.values()), fixed=fixed, source=source, parts=by_part)


def tower_params(kind: str, vision: dict, proj: int, text: dict | None) -> int:
    """Parameters of the whole dual encoder (both towers are loaded; the text tower stays frozen),
    counted on the meta device."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    text = text or TEXT_TOWERS["siglip" if kind == "siglip" else "clip"]
    with torch.device("meta"):
        if kind == "siglip":
            model = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
        else:
            model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=proj))
    return sum(p.numel() for p in model.parameters())


def known_vision(name: str) -> tuple[str, dict, int] | None:
    """(model type, vision config, projection dim) of a tower known offline (tiny included)."""
    return tower_vision(name)


def memory_section(cfg: Any, described: dict, args: Any) -> dict:
    """``{"memory_plan": ...}`` for ``enhance --describe``: each stage's per-GPU plan under the
    flags' (or the launcher's) setup, and the paper's Table 7 figure beside stage 2."""
    setup = memory.setup_from(args)
    setup.mixed_precision = cfg.train.mixed_precision
    counts = dict(described.get("parameters", {}))
    vision = known_vision(cfg.backbone.name_or_path)
    if vision is not None:
        kind, v, proj = vision
        text = TEXT_TOWERS["clip-h"] if kind == "clip" and v["hidden_size"] == 1280 else None  # ViT-H/14
        if cfg.backbone.name_or_path.startswith("genhancer-tiny:"):
            text = {
                k: v[k]
                for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
            }
        counts["tower_total"] = tower_params(kind, v, proj, text)
    plan = plan_stages(
        cfg, counts, (vision[0], vision[1]) if vision else None, setup, described.get("method")
    )
    return {"memory_plan": plan}


#: Frozen parts of an SD pipeline besides the UNet (diffusers configs of SD 2.x): the VAE and the
#: OpenCLIP ViT-H text encoder, counted as loaded.
SD_VAE_PARAMS = 83_653_863
SD_TEXT_PARAMS = 340_387_840


def unet_slice(unet_config: dict, side: int, context_tokens: int, precision: str, storage: str) -> dict:
    """Measured bytes of the whole frozen SD UNet (the gradient flows to its condition) at
    ``side`` x ``side`` latents; tag ``other`` holds everything."""
    from diffusers import UNet2DConditionModel

    dtype = getattr(torch, storage)

    def build():
        with torch.device("meta"):
            return UNet2DConditionModel(**unet_config).to(dtype)

    def run(model, b):
        x = torch.randn(b, model.config.in_channels, side, side, dtype=dtype)
        ctx = torch.randn(b, context_tokens, model.config.cross_attention_dim, requires_grad=True)
        out = model(x, torch.full((b,), 500), encoder_hidden_states=ctx.to(dtype), return_dict=False)[0]
        return out.float().pow(2).mean()

    prec = precision if storage == "float32" else "no"  # bf16 weights: no autocast copies
    return _measure(build, run, lambda m: {}, prec, False)


def plan_sd_stages(
    cfg: Any, parts: dict[str, Any], vision: tuple[str, dict] | None, setup: Setup, described: dict
) -> dict[str, Any]:
    """DIVA / DCR / naive: the frozen UNet measured whole (per call), times the UNet calls a
    micro-batch makes per image (DCR: B + 1 with exact negatives), plus the tower's layers when the
    stage trains it (LoRA or full)."""
    sd = cfg.method.sd
    unet_cfg, down, context = sd_unet_config(sd.path), 8, 77
    pipeline_rest = SD_VAE_PARAMS + SD_TEXT_PARAMS
    if sd.path.startswith("genhancer-tiny:sd"):
        pipeline_rest = 0  # the tiny VAE and text side: a few hundred thousand weights
        unet_cfg = tiny_sd_unet_config(TINY_SD_RECIPE, TINY_CLIP_RECIPE["text_hidden"])
        down = 2 ** (len(TINY_SD_RECIPE["vae_block_out_channels"]) - 1)
        context = TINY_CLIP_RECIPE["max_text_len"]
    unet_params = parts.get("denoiser_frozen")
    projector = parts.get("projector")
    if unet_cfg is not None and not isinstance(unet_params, int):
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            unet_params = sum(p.numel() for p in UNet2DConditionModel(**unet_cfg).parameters())
    if unet_cfg is None or not isinstance(projector, int):
        return {"note": "memory plan needs a known SD UNet and backbone (see enhance/model_configs)"}
    precision = cfg.train.mixed_precision
    side = cfg.backbone.image_size // down
    torch_version = torch.__version__.split("+")[0]
    key = {"slice": "sd-unet", "torch": torch_version, "unet": unet_cfg, "side": side, "context": context,
           "precision": precision, "storage": sd.unet_dtype}  # fmt: skip
    unet = memory.cached_measurement(
        key, lambda: unet_slice(unet_cfg, side, context, precision, sd.unet_dtype)
    )
    unet = unet.get("other", {"per_sample": 0.0, "fixed": 0.0})
    tuning = getattr(cfg.stage2, "tower_tuning", "lora")
    tower = _tower_measurement(cfg, vision, precision, full=tuning == "full")
    tower_total = parts.get("tower_total")
    lora, bias, full_tower = _count(parts, "lora"), _count(parts, "tower_bias"), _count(parts, "tower")
    costs = described.get("unet_cost", {})
    out: dict[str, Any] = {"setup": setup.label(), "gradient_checkpointing": cfg.perf.gradient_checkpointing}
    for stage in cfg.train.stages:
        st = getattr(cfg, f"stage{stage}")
        calls_per_image = float(costs.get(f"stage{stage}", {}).get("vs_one_call_per_image", 1.0))
        tower_trains = stage == 2
        projector_trains = "projector" in get_method(cfg.method.name).trains(stage, cfg)
        trainable_tower = (full_tower if tuning == "full" else lora + bias) if tower_trains else 0
        plan_parts = [
            Part("unet", unet_params, 0, sd.unet_dtype),
            Part("sd_vae_and_text_encoder", pipeline_rest, 0),
            Part("projector", projector, projector if projector_trains else 0),
        ]
        if isinstance(tower_total, int):
            plan_parts.append(Part("tower", tower_total + (0 if tuning == "full" else lora), trainable_tower))
        by_part = {"unet_calls": unet["per_sample"] * calls_per_image}
        fixed = unet["fixed"]
        source = (
            f"measured: the whole frozen UNet at {side}x{side} latents, x {calls_per_image:g} calls per image"
        )
        if tower_trains and tower is not None and vision is not None:
            layers = vision[1]["num_hidden_layers"]
            by_part["tower_layers"] = tower["tower_layer"]["per_sample"] * layers
            fixed += tower["tower_layer"]["fixed"] * layers
            source += f"; 1 tower layer ({tuning}) x {layers}"
        acts = Activations(per_sample=sum(by_part.values()), fixed=fixed, source=source, parts=by_part)
        stage_setup = Setup(**{**memory.setup_dict(setup), "optimizer": st.optimizer})
        row = memory.plan(plan_parts, acts, st.per_device_batch_size, stage_setup)
        row["other_setups"] = memory.alternatives(plan_parts, acts, st.per_device_batch_size, stage_setup)
        if getattr(cfg.method, "negatives", None) == "exact":  # DCR's exact negatives
            # B^2 + B UNet calls: the per-image cost grows with B, so search the largest B directly
            def total(
                b: int, tower_ps=by_part.get("tower_layers", 0.0), fx=fixed, pp=plan_parts, su=stage_setup
            ):
                a = Activations(tower_ps + unet["per_sample"] * (b + 1), fx)
                return memory.plan(pp, a, b, su)["total_gib"]

            row["activations_note"] = "DCR exact negatives: UNet activations grow as B^2 + B per micro-batch"
            if setup.gpu_memory_gib is not None:
                b = 0
                while b < 4096 and total(b + 1) <= setup.gpu_memory_gib:
                    b += 1
                row["max_micro_batch"] = b
        out[f"stage{stage}"] = row
    return out
