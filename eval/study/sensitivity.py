"""How much of the stage-1 loss the condition explains: the testbed's sensitivity, as a number.

A method that trains the tower *through* a denoiser can only move the tower as far as the
denoiser reads its condition. Before any enhancement result is read, the study therefore trains
the denoiser's stage 1 (tower frozen) once per **condition** and measures a **paired held-out
loss**: held-out scenes x ``draws`` draws of (latent sample, noise, t), the same draws for every
condition, so condition differences are not drowned by draw noise. Conditions (study options, no
code edits):

* ``token``: the tower's global token (what the methods use);
* ``null``: zeros of the token's width (the unconditional reference);
* ``token+<attrs>``: the token concatenated with oracle one-hots of ``attrs`` (``rare``: count,
  orientation, position; ``all``: the six attributes; or one attribute name, e.g.
  ``token+orientation``);
* SD only, no training: ``caption`` (the SD's own text encoder on the full caption, what it was
  pretrained with) and ``empty`` (the empty prompt).

Reported per seed and as mean ± std over seeds (:func:`shares`): the condition's share
``(L_null - L_token) / L_null``, a perfect condition's share ``(L_null - L_token+all) / L_null``
and the oracle's extra share per attribute ``(L_token - L_token+a) / L_null``, each also per
band of t.

Two denoisers are measured: ``genhancer`` (the random-init FLUX-style denoiser and projector of
``enhance --preset tiny``, trained here) and ``sd`` (the frozen tiny Stable Diffusion that DIVA,
DCR and the naive baseline condition through a projector added to the empty-prompt embedding;
only the projector trains, as in DCR's stage 1). The tower token and the VAE posterior are
computed once per seed (the tower is frozen in stage 1), so a condition costs only the
denoiser's own steps; what this gives up against a full ``enhance`` run: no random resized crop
(every step sees the full image).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from enhance.backbones import build_backbone
from enhance.config import load_config
from enhance.methods.augment import normalise
from enhance.projector import ConditionProjector
from enhance.vae import build_codec
from eval.flow_heldout import FlowTask, heldout_draws, heldout_loss, posteriors, sample_latent, to_unit
from eval.stats import mean_std
from eval.study.conditions import SD_NATIVE, check_conditions, one_hots, oracle_attributes
from eval.study.protocol import IMAGE_SIZE, original_tower, render_split, world
from genhancer.runtime.checkpoint import atomic_write_text
from genhancer.runtime.seeding import derive_seed
from genhancer.toyworld.models import resolve_tiny

__all__ = ["check_conditions", "measure", "run", "shares"]

log = logging.getLogger("study.sensitivity")


# --- data: rendered once, encoded once per tower -------------------------------------------------


@torch.no_grad()
def tower_tokens(backbone, unit: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The frozen tower's global token of every image, float32."""
    m, s = backbone.image_mean, backbone.image_std
    out = [
        backbone(normalise(unit[i : i + batch], m, s)).global_token.float()
        for i in range(0, len(unit), batch)
    ]
    return torch.cat(out)


# --- the two denoisers ----------------------------------------------------------------------------


class SDTask:
    """The frozen tiny SD with a trained projector added to the empty-prompt embedding (DCR's and
    the naive baseline's stage-1 condition), or its own text encoder (``caption`` / ``empty``)."""

    def __init__(self, unet, scheduler, target: str, text_empty: torch.Tensor, cond_dim: int, seed: int):
        self.unet, self.scheduler, self.target = unet, scheduler, target
        self.text_empty = text_empty  # [L, H]
        torch.manual_seed(seed)
        self.projector = ConditionProjector(
            global_dim=max(cond_dim, 1), pooled_dim=0, context_dim=text_empty.shape[-1]
        )

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.projector.parameters())

    def draw_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=gen)

    def t_unit(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() / self.scheduler.config.num_train_timesteps

    def context(self, cond: torch.Tensor) -> torch.Tensor:
        if cond.ndim == 3:  # a text-encoder context given whole (``caption``)
            return cond
        _, ctx = self.projector(cond)
        return ctx + self.text_empty[None]

    def losses(
        self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        noisy = self.scheduler.add_noise(z, noise, t)
        target = noise if self.target == "epsilon" else self.scheduler.get_velocity(z, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=self.context(cond)).sample
        return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


# --- one seed: every condition on the same draws ---------------------------------------------------


@dataclass
class Encoded:
    """What every condition of a seed shares: tokens, posteriors and labels of both splits."""

    train_tokens: torch.Tensor
    test_tokens: torch.Tensor
    train_post: tuple[torch.Tensor, torch.Tensor]
    test_post: tuple[torch.Tensor, torch.Tensor]
    train_attrs: list[dict]
    test_attrs: list[dict]
    test_captions: list[str]
    max_count: int


def condition_features(enc: Encoded, condition: str, split: str) -> torch.Tensor:
    tokens = enc.train_tokens if split == "train" else enc.test_tokens
    attrs = enc.train_attrs if split == "train" else enc.test_attrs
    if condition == "null":
        return torch.zeros_like(tokens)
    return torch.cat([tokens, one_hots(attrs, oracle_attributes(condition), enc.max_count)], dim=1)


def train_condition(
    task,
    enc: Encoded,
    cond: torch.Tensor,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    latent_kw: dict,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
) -> list[float]:
    """Stage 1 on one condition: AdamW, constant lr, grad-norm clip; the batch indices, latent
    samples, noise and t come from a generator seeded by ``seed`` alone (paired across conditions)."""
    params = task.parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(derive_seed("sensitivity_train", seed))
    mean, logvar = enc.train_post
    curve = []
    for _ in range(steps):
        idx = torch.randint(0, mean.shape[0], (batch,), generator=gen)
        eps = torch.randn(mean[idx].shape, generator=gen)
        noise = torch.randn(mean[idx].shape, generator=gen)
        t = task.draw_t(batch, gen)
        z = sample_latent(mean[idx], logvar[idx], eps, **latent_kw)
        loss = task.losses(z, noise, t, cond[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        curve.append(loss.item())
    return curve


# --- aggregation -------------------------------------------------------------------------------------


def shares(records: Sequence[dict], conditions: Sequence[str]) -> dict:
    """Per seed and mean ± std over seeds: the condition's share, the perfect condition's share and
    each oracle's extra share over the token, overall and per band of t; ``resolved`` when the
    mean over seeds is at least 3 seed std (paired per seed) and positive."""
    out: dict = {"per_seed": [], "summary": {}}
    for r in records:
        loss = {c: r["conditions"][c]["loss"] for c in conditions if c in r["conditions"]}
        bands = {c: r["conditions"][c]["by_t"] for c in loss}
        row: dict = {"seed": r["seed"], "loss": loss}
        ref = loss.get("null", loss.get("empty"))
        ref_name = "null" if "null" in loss else "empty"
        if ref is not None:
            for c in loss:
                if c in ("null", "empty"):
                    continue
                row[f"share/{c}"] = (ref - loss[c]) / ref
                row[f"share_by_t/{c}"] = {
                    b: (bands[ref_name][b] - bands[c][b]) / bands[ref_name][b] for b in bands[c]
                }
                if c.startswith("token+") and "token" in loss:
                    row[f"extra/{c}"] = (loss["token"] - loss[c]) / ref
        out["per_seed"].append(row)
    keys = [k for k in out["per_seed"][0] if k.startswith(("share/", "extra/"))]
    for k in keys:
        xs = [row[k] for row in out["per_seed"] if k in row]
        m, s = mean_std(xs)
        out["summary"][k] = {
            "mean": m,
            "std": s,
            "n": len(xs),
            "resolved_3std": bool(len(xs) > 1 and m > 0 and m >= 3 * s),
        }
    for c in conditions:
        xs = [row["loss"][c] for row in out["per_seed"] if c in row["loss"]]
        if xs:
            m, s = mean_std(xs)
            out["summary"][f"loss/{c}"] = {"mean": m, "std": s, "n": len(xs)}
    return out


def markdown(result: dict, title: str) -> str:
    """One table: held-out loss per condition, then the shares (percent of the null loss)."""
    s = result["summary"]
    lines = [
        f"**{title}**",
        "",
        "| quantity | mean ± std over seeds | per seed | resolved (≥ 3 std) |",
        "|---|---|---|---|",
    ]
    for k, v in s.items():
        per_seed = [
            row["loss"].get(k[5:]) if k.startswith("loss/") else row.get(k) for row in result["per_seed"]
        ]
        pct = not k.startswith("loss/")
        f = (lambda x: f"{100 * x:.2f} %") if pct else (lambda x: f"{x:.4f}")
        cells = ", ".join("–" if x is None else f(x) for x in per_seed)
        res = ("yes" if v.get("resolved_3std") else "no") if pct else ""
        lines.append(f"| {k} | {f(v['mean'])} ± {f(v['std'])} | {cells} | {res} |")
    return "\n".join(lines) + "\n"


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1))


# --- the measurement, per denoiser and seed ------------------------------------------------------------

#: Held-out world of the sensitivity loss (the scoring worlds are 9001-9003).
SENSITIVITY_WORLD = 9004


def enhance_config(cfg, clip_dir: Path, cache_dir: str):
    """``enhance --preset tiny`` with the study's tower and ``schedule.enhance_sets``: the
    GenHancer parts (denoiser width, flow sampler) the study's runs train."""
    sets = [f"backbone.name_or_path={clip_dir}", f"cache_dir={cache_dir}", *cfg.schedule.enhance_sets]
    return load_config("tiny", overrides=sets)


def encode_seed(cfg, seed: int, cache_dir: str, vae, vae_name: str) -> tuple[Encoded, object]:
    """The seed's sparse-caption tower, its tokens and ``vae``'s posteriors of both splits; stored
    under ``cache_dir`` keyed by tower, world, sizes and ``vae_name``, so every schedule measured
    on one world encodes its images once."""
    clip_dir = original_tower(cfg, seed, cache_dir)
    ecfg = enhance_config(cfg, clip_dir, cache_dir)
    key = json.dumps(
        [
            clip_dir.name,
            vae_name,
            cfg.world.options(),
            seed,
            cfg.schedule.images,
            cfg.sensitivity.heldout_images,
        ],
        sort_keys=True,
    )
    path = Path(cache_dir) / "study-encoded" / f"{derive_seed('study_encoded', key) % 10**12:012d}.pt"
    if path.is_file():
        return Encoded(**torch.load(path, weights_only=True)), ecfg
    backbone = build_backbone(ecfg.backbone, cache_dir).eval()
    train = render_split(world(cfg, 2000 + seed), cfg.schedule.images)
    test = render_split(world(cfg, SENSITIVITY_WORLD), cfg.sensitivity.heldout_images)
    tu, su = to_unit(train.images, IMAGE_SIZE), to_unit(test.images, IMAGE_SIZE)
    enc = Encoded(
        tower_tokens(backbone, tu),
        tower_tokens(backbone, su),
        posteriors(vae, tu),
        posteriors(vae, su),
        train.attributes,
        test.attributes,
        test.captions,
        cfg.world.max_count,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(dataclasses.asdict(enc), tmp)
    tmp.replace(path)
    return enc, ecfg


def _sd_parts(cfg, cache_dir: str):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = resolve_tiny(cfg.sensitivity.sd_path, cache_dir)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").eval().requires_grad_(False)
    sched = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").eval()

    @torch.no_grad()
    def text(prompts: list[str]) -> torch.Tensor:
        ids = tok(
            prompts,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return te(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state.float()

    return unet, vae, sched, text, float(vae.config.scaling_factor)


def _flow_setup(cfg, seed: int, cache_dir: str):
    """GenHancer's denoiser: the VAE and flow settings of ``enhance --preset tiny`` + the study's sets."""
    probe_cfg = enhance_config(cfg, original_tower(cfg, seed, cache_dir), cache_dir)
    codec = build_codec(probe_cfg.method.vae, cache_dir)
    latent_kw = {"sample": codec.sample_posterior, "shift": codec.shift_factor, "scale": codec.scaling_factor}
    enc, ecfg = encode_seed(cfg, seed, cache_dir, codec.vae, f"genhancer:{probe_cfg.method.vae.name_or_path}")
    channels = codec.latent_channels

    def make(cond_dim: int):
        return FlowTask(ecfg, cond_dim, channels, seed)

    return make, latent_kw, enc, None, None


def _sd_setup(cfg, seed: int, cache_dir: str):
    """The frozen SD: its UNet, VAE, scheduler and text encoder (``sensitivity.sd_path``)."""
    unet, vae, sched, text, scale = _sd_parts(cfg, cache_dir)
    latent_kw = {"sample": cfg.sensitivity.sd_sample_posterior, "shift": 0.0, "scale": scale}
    enc, _ = encode_seed(cfg, seed, cache_dir, vae, f"sd:{cfg.sensitivity.sd_path}")
    empty = text([""])[0]

    def make(cond_dim: int):
        return SDTask(unet, sched, cfg.sensitivity.sd_target, empty, cond_dim, seed)

    return make, latent_kw, enc, text, empty


#: ``sensitivity.denoisers`` -> its setup.
SETUPS = {"genhancer": _flow_setup, "sd": _sd_setup}


def measure(cfg, denoiser: str, seed: int, out_dir: Path, cache_dir: str) -> dict:
    """Every condition of ``cfg.sensitivity`` for one denoiser and seed; one JSON per condition
    under ``out_dir/<denoiser>/seed<k>/`` (a rerun reuses them)."""
    folder = out_dir / denoiser / f"seed{seed}"
    conditions = list(cfg.sensitivity.conditions)
    done = {
        c: json.loads((folder / f"{c}.json").read_text())
        for c in conditions
        if (folder / f"{c}.json").is_file()
    }
    if len(done) < len(conditions):
        make, latent_kw, enc, text, empty = SETUPS[denoiser](cfg, seed, cache_dir)
        draws = None
        for c in conditions:
            if c in done:
                continue
            if c in SD_NATIVE:
                task = make(1)
                ctx = (
                    text(enc.test_captions)
                    if c == "caption"
                    else empty[None].expand(len(enc.test_captions), -1, -1)
                )
                draws = draws or heldout_draws(enc.test_post[0], task, cfg.sensitivity.draws)
                rec = {**heldout_loss(task, enc.test_post, ctx, draws, latent_kw), "train_curve": []}
            else:
                train_cond = condition_features(enc, c, "train")
                task = make(train_cond.shape[1])
                draws = draws or heldout_draws(enc.test_post[0], task, cfg.sensitivity.draws)
                curve = train_condition(
                    task,
                    enc,
                    train_cond,
                    cfg.sensitivity_steps,
                    cfg.sensitivity_lr,
                    cfg.schedule.batch,
                    seed,
                    latent_kw,
                )
                rec = {
                    **heldout_loss(task, enc.test_post, condition_features(enc, c, "test"), draws, latent_kw)
                }
                tail = curve[-max(1, len(curve) // 4) :]
                rec["train_loss_last_quarter"] = sum(tail) / len(tail)
            rec.update(condition=c, seed=seed, denoiser=denoiser, steps=cfg.sensitivity_steps)
            save_json(folder / f"{c}.json", rec)
            done[c] = rec
            log.info("sensitivity %s seed %d %s: held-out loss %.5f", denoiser, seed, c, rec["loss"])
    return {"seed": seed, "conditions": done}


def run(cfg, out_dir: Path, cache_dir: str) -> dict:
    """Every denoiser and seed; writes ``out_dir/sensitivity.json`` and ``sensitivity.md``."""
    result: dict = {"steps": cfg.sensitivity_steps, "lr": cfg.sensitivity_lr, "world": cfg.world.options()}
    md = []
    for d in cfg.sensitivity.denoisers:
        records = [measure(cfg, d, s, out_dir, cache_dir) for s in cfg.seeds]
        result[d] = shares(records, cfg.sensitivity.conditions)
        result[d]["records"] = records
        md.append(markdown(result[d], f"{d}: stage 1 {cfg.sensitivity_steps} steps, seeds {list(cfg.seeds)}"))
    save_json(out_dir / "sensitivity.json", result)
    (out_dir / "sensitivity.md").write_text("\n".join(md))
    return result
