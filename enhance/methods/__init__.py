"""The methods on one bench: a method is a small named part -- which denoiser, how it is
conditioned, the objective, and the stage plan -- that plugs into the one stage driver and loop.

``method.name`` picks one of :data:`METHODS`. A method

* ``validate(cfg)``: refuses, at config time, a denoiser it cannot use or keys of another method's
  denoiser, and a stage list its plan does not have;
* ``precheck(cfg, cache_dir)``: checks that need only files' JSON (before any weight is loaded);
* ``build(cfg, backbone, cache_dir)``: the model (``training_forward`` / ``reconstruct``);
* ``trains(stage, cfg)``: which parts train in a stage (``projector``, ``denoiser``, ``lora``,
  ``tower``), read by :func:`enhance.stages.configure_stage`;
* ``describe(cfg)``: what ``enhance --describe`` adds (the stage plan, the UNet calls per step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genhancer.runtime.errors import UserError

if TYPE_CHECKING:  # torch loads with the model, not with the config (bad input is refused first)
    import torch


class Method:
    name = ""
    summary = ""
    denoiser_kinds: tuple[str, ...] = ()
    stages: tuple[int, ...] = (1, 2)
    plan: dict[int, str] = {}

    def validate(self, cfg) -> None:
        kind = cfg.denoiser.kind
        if kind not in self.denoiser_kinds:
            raise UserError(
                f"denoiser.kind={kind} does not go with method.name={self.name} (it uses "
                f"{' | '.join(self.denoiser_kinds)}); drop the override or pick another --method"
            )
        bad = [s for s in cfg.train.stages if s not in self.stages]
        if bad:
            raise UserError(
                f"train.stages={cfg.train.stages}: method {self.name} has stages {list(self.stages)}"
            )

    def precheck(self, cfg, cache_dir: str | None) -> None:
        """Checks that read only configs (nothing for GenHancer's random-init denoiser)."""

    def build(self, cfg, backbone, cache_dir: str | None):
        raise NotImplementedError

    def trains(self, stage: int, cfg) -> set[str]:
        raise NotImplementedError

    def describe(self, cfg) -> dict:
        return {
            "name": self.name,
            "summary": self.summary,
            "stages": {f"stage{s}": self.plan.get(s, "") for s in cfg.train.stages},
        }


class GenHancer(Method):
    name = "genhancer"
    summary = "random-init lightweight denoiser reconstructs from the global token; two stages"
    denoiser_kinds = ("continuous", "discrete")
    plan = {
        1: "projector + denoiser train (tower frozen), flow matching / masked codes",
        2: "tower LoRA (+ projector and denoiser with stage2_all)",
    }

    def build(self, cfg, backbone, cache_dir):
        from enhance.denoisers import build_genhancer

        return build_genhancer(cfg, backbone, cache_dir)

    def trains(self, stage: int, cfg) -> set[str]:
        if stage == 1:
            return {"projector", "denoiser"}
        parts = {"lora" if cfg.stage2.tower_tuning == "lora" else "tower"}
        if cfg.stage2.variant == "stage2_all" or cfg.train.one_stage:
            parts |= {"projector", "denoiser"}
        return parts


_DENOISER_KEYS_NOTE = "configures GenHancer's own denoiser; the frozen-SD methods use sd.*"


class FrozenSD(Method):
    """Shared by the methods that train through a frozen pretrained SD UNet."""

    denoiser_kinds = ("sd",)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        from enhance.config import DenoiserConfig, FlowConfig
        from genhancer.runtime.configtools import diff_keys, to_dict

        changed = diff_keys(to_dict(DenoiserConfig()), to_dict(cfg.denoiser), "denoiser")
        changed = [k for k in changed if k != "denoiser.kind"]
        changed += diff_keys(to_dict(FlowConfig()), to_dict(cfg.flow), "flow")
        if changed:
            raise UserError(f"{changed[0]} {_DENOISER_KEYS_NOTE} (method.name={self.name})")
        if cfg.sd.cross_attention_dim < 1 or cfg.sd.num_train_timesteps < 1:
            raise UserError("sd.cross_attention_dim and sd.num_train_timesteps must be >= 1")
        if cfg.latent_cache.path:
            raise UserError(
                f"latent_cache.path caches FLUX-VAE posteriors for GenHancer, not for {self.name}"
            )
        if cfg.backbone.local_token_ratio:
            raise UserError(f"backbone.local_token_ratio is a GenHancer ablation, not used by {self.name}")

    def precheck(self, cfg, cache_dir):
        from enhance.denoisers.sd import check_pipeline
        from genhancer.toyworld.models import resolve_tiny

        check_pipeline(cfg, resolve_tiny(cfg.sd.path, cache_dir))

    def text(self, cfg, path: str, prompt: str) -> torch.Tensor:
        from enhance.denoisers.sd import text_embedding

        emb = text_embedding(cfg, path, prompt)
        if emb.shape[-1] != cfg.sd.cross_attention_dim:
            raise UserError(
                f"the SD text encoder at '{cfg.sd.path}' gives {emb.shape[-1]}-d embeddings, "
                f"sd.cross_attention_dim={cfg.sd.cross_attention_dim}"
            )
        return emb

    def _parts(self, cfg, cache_dir):
        from enhance.denoisers.sd import build_sd

        return build_sd(cfg, cache_dir)

    def trains(self, stage: int, cfg) -> set[str]:
        if stage == 1:
            return {"projector"}
        return {"lora" if cfg.stage2.tower_tuning == "lora" else "tower"}

    def describe(self, cfg) -> dict:
        out = super().describe(cfg)
        out["sd"] = {"path": cfg.sd.path, "target": cfg.sd.target, "unet_dtype": cfg.sd.unet_dtype}
        return out


def dcr_negatives(b: int, dcr_cfg) -> int:
    """Negatives per anchor in a micro-batch of ``b``: every other image (exact) or
    ``dcr.num_negatives`` of them (sampled), never more than ``b - 1``."""
    return b - 1 if dcr_cfg.negatives == "exact" else min(dcr_cfg.num_negatives, b - 1)


def dcr_unet_calls(b: int, dcr_cfg) -> int:
    """UNet calls per micro-batch: ``b * (K + 1)`` (anchor + negatives) and ``b`` augmented views."""
    return b * (dcr_negatives(b, dcr_cfg) + 1) + b


def _projector(backbone_dim: int, cfg, mlp: bool):
    import torch

    from enhance.methods.sd_models import TokenProjector

    torch.manual_seed(cfg.train.seed)
    return TokenProjector(backbone_dim, cfg.sd.cross_attention_dim, mlp=mlp)


class DCR(FrozenSD):
    name = "dcr"
    summary = "frozen SD; InfoNCE over predicted noise (anchor, augmented-view and target positives)"
    plan = {
        1: "projector (2-layer MLP on the global token) trains, tower frozen, DCR loss",
        2: "tower LoRA trains, projector frozen, DCR loss",
    }

    def validate(self, cfg) -> None:
        super().validate(cfg)
        d = cfg.dcr
        if d.temperature <= 0 or d.num_negatives < 1 or d.unet_chunk < 0:
            raise UserError("dcr.temperature must be > 0, dcr.num_negatives >= 1, dcr.unet_chunk >= 0")

    def build(self, cfg, backbone, cache_dir):
        from enhance.methods.sd_models import DCRModel

        denoiser, codec, path = self._parts(cfg, cache_dir)
        text = self.text(cfg, path, "")
        return DCRModel(
            backbone, _projector(backbone.global_dim, cfg, True), denoiser, codec, text, cfg, dcr_cfg=cfg.dcr
        )

    def describe(self, cfg) -> dict:
        out = super().describe(cfg)
        costs = {}
        for name in ("stage1", "stage2"):
            b = getattr(cfg, name).per_device_batch_size
            k = dcr_negatives(b, cfg.dcr)
            calls = dcr_unet_calls(b, cfg.dcr)
            costs[name] = {
                "per_device_batch": b,
                "unet_calls_per_micro_batch": calls,
                "vs_one_call_per_image": round(calls / b, 2),
                "note": f"dcr.negatives={cfg.dcr.negatives}: B*(K+1) pairs + B augmented-view calls, "
                f"K={k}" + (" (exact: B^2 + B)" if cfg.dcr.negatives == "exact" else ""),
            }
        out["unet_cost"] = costs
        return out


class NaiveContrastive(FrozenSD):
    name = "naive-contrastive"
    summary = "frozen SD; w_rec * diffusion MSE + w_con * InfoNCE on the tower's global features"
    plan = {
        1: "projector trains on the diffusion MSE, tower frozen",
        2: "tower LoRA trains on w_rec * MSE + w_con * InfoNCE, projector frozen",
    }

    def build(self, cfg, backbone, cache_dir):
        from enhance.methods.sd_models import NaiveContrastiveModel

        denoiser, codec, path = self._parts(cfg, cache_dir)
        text = self.text(cfg, path, "")
        return NaiveContrastiveModel(
            backbone,
            _projector(backbone.global_dim, cfg, True),
            denoiser,
            codec,
            text,
            cfg,
            naive_cfg=cfg.naive,
            aug_cfg=cfg.dcr,
        )


class DIVA(FrozenSD):
    name = "diva"
    summary = "frozen SD; tower tokens + prompt embedding condition the UNet; diffusion MSE; one stage"
    stages = (2,)
    plan = {2: "the whole image side (stage2.tower_tuning=full) and the linear projector train together"}

    def validate(self, cfg) -> None:
        super().validate(cfg)
        d = cfg.diva
        if d.draws < 1 or d.num_tokens < 1 or d.avg_window < 1:
            raise UserError("diva.draws, diva.num_tokens and diva.avg_window must be >= 1")

    def build(self, cfg, backbone, cache_dir):
        from enhance.methods.sd_models import DivaModel

        denoiser, codec, path = self._parts(cfg, cache_dir)
        text = self.text(cfg, path, cfg.diva.prompt)
        if cfg.diva.text == "full" and cfg.diva.tokens == "random_local" and cfg.diva.num_tokens != len(text):
            raise UserError(
                f"diva.text=full adds the prompt embedding position by position: diva.num_tokens must be "
                f"its length {len(text)}, got {cfg.diva.num_tokens}"
            )
        dim = backbone.joint_dim
        return DivaModel(backbone, _projector(dim, cfg, False), denoiser, codec, text, cfg, diva_cfg=cfg.diva)

    def trains(self, stage: int, cfg) -> set[str]:
        return {"projector", "lora" if cfg.stage2.tower_tuning == "lora" else "tower"}


METHODS: dict[str, Method] = {m.name: m for m in (GenHancer(), DIVA(), DCR(), NaiveContrastive())}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"--method {name}: unknown method; choose one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "get_method"]
