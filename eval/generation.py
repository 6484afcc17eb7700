"""Generation quality of an ``enhance`` run: how well its denoiser rebuilds held-out images from the
tower (the x-axis of the GenHancer paper's Fig. 1, whose point is that better generation need not
mean a better tower).

Two numbers per run, both paired across runs (same images, same draws, same noise):

* ``recon_loss``: the denoiser's flow-matching loss on held-out images under fixed draws of
  (latent sample, noise, t). It is :mod:`eval.flow_heldout`'s paired held-out loss
  (``heldout_draws`` / ``heldout_loss``), run with the run's own tower, projector, denoiser and VAE
  instead of a freshly trained stage 1. Lower is better.
* ``clip_score``: images sampled from the denoiser conditioned on the tower (Euler steps of the
  rectified flow from seeded noise, :meth:`enhance.model.GenHancerModel.reconstruct`), decoded by
  the run's VAE and scored by a frozen full-caption judge CLIP: 100 x cos(judge(image),
  judge(caption)), averaged over images. Higher is better.

The condition is the one the run trained with (:meth:`enhance.model.GenHancerModel.condition`: the
global token, plus the run's share of local tokens). Only GenHancer's continuous denoiser has a
flow-matching loss and Euler sampling, so other exports (the Perceiver, a frozen SD) are not scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from enhance.backbones import build_backbone
from enhance.config import BackboneConfig
from enhance.export import load_denoiser_export
from enhance.layout import find_denoiser_dir, read_denoiser_meta
from enhance.methods.augment import normalise
from enhance.methods.genhancer.config import GenHancerSection
from enhance.model import GenHancerModel
from enhance.preview import to_uint8
from eval.clip.encoders import load_encoder
from eval.flow_heldout import FlowTask, heldout_draws, heldout_loss, posteriors, to_unit
from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError
from genhancer.runtime.seeding import derive_seed
from genhancer.toyworld.world import ToyWorld

#: The only denoiser kind with a flow-matching loss (``DenoiserMeta.denoiser_kind``).
CONTINUOUS = "continuous"


def continuous_denoiser_dir(tower: str | Path) -> Path | None:
    """The continuous denoiser that belongs to a tower folder (a run, its ``export/``,
    ``export/hf``, ``export/steps/<n>/hf``), or None: a plain tower, or another kind of denoiser.
    Torch-free: the leaderboard asks before any model loads."""
    found = find_denoiser_dir(tower)
    if found is None or read_denoiser_meta(found).denoiser_kind != CONTINUOUS:
        return None
    return found


@dataclass
class GenerationSettings:
    """What decides the numbers besides the run and the images (recorded with them).

    Attributes:
        draws: (latent sample, noise, t) draws per image for ``recon_loss``.
        steps: Euler steps per reconstruction (0: the run's own ``flow.preview_steps``).
        seed: seeds the draws and the sampling noise (the same for every run: paired).
        batch_size: images per reconstruction batch (the noise of an image depends on its batch).
    """

    draws: int = 2
    steps: int = 8
    seed: int = 0
    batch_size: int = 32


@dataclass
class CaptionedImages:
    """Held-out images and the caption each is scored against."""

    images: list[Image.Image]
    captions: list[str]
    source: str
    revision: str


def toy_captioned(seed: int, n: int, image_size: int = 64, **world_options) -> CaptionedImages:
    """``n`` toy-world scenes with their full captions (the judge ``genhancer-tiny:clip`` was
    trained on full captions; a sparse-caption tower was not)."""
    samples = list(ToyWorld(seed=seed, image_size=image_size, **world_options).samples(n))
    source = f"toyworld(seed={seed}, n={n}, size={image_size}{', ' if world_options else ''}"
    source += ", ".join(f"{k}={v}" for k, v in sorted(world_options.items())) + ")"
    return CaptionedImages([s.image for s in samples], [s.caption for s in samples], source, "generated")


def retrieval_captioned(ret, n: int) -> CaptionedImages:
    """The first ``n`` images of a :class:`eval.clip.zeroshot.RetrievalSet`, each with its first caption."""
    first: dict[int, str] = {}
    for text, owner in zip(ret.captions, ret.caption_image, strict=True):
        first.setdefault(owner, text)
    keep = sorted(first)[:n]
    images = [_rgb(ret.images[i]) for i in keep]
    return CaptionedImages(images, [first[i] for i in keep], ret.name, ret.revision)


def _rgb(item) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with Image.open(item) as im:
        return im.convert("RGB")


@dataclass
class GenerationScore:
    """One run's generation quality; per-image values for intervals and paired tests."""

    recon_loss: float
    clip_score: float
    loss_by_t: dict[str, float]
    per_image_loss: list[float]
    per_image_cosine: list[float]
    steps: int

    def metrics(self) -> dict[str, float]:
        return {"recon_loss": self.recon_loss, "clip_score": self.clip_score}


class Judge:
    """A frozen full-caption CLIP scoring images against captions, loaded through
    :func:`eval.clip.encoders.load_encoder`: the same code for ``genhancer-tiny:clip`` and
    ``openai/clip-vit-large-patch14``."""

    def __init__(self, spec: str, device: str = "cpu", cache_dir: str | None = None, batch_size: int = 64):
        self.spec = spec
        self.encoder = load_encoder(spec, device, batch_size, cache_dir)

    @property
    def revision(self) -> str:
        return self.encoder.revision

    def cosines(self, images: Sequence[Image.Image], captions: Sequence[str]) -> torch.Tensor:
        """cos(judge(image_i), judge(caption_i)) per pair, float32 [N]."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions")
        img = torch.nn.functional.normalize(self.encoder.encode_images(list(images), "judge"), dim=-1)
        txt = torch.nn.functional.normalize(self.encoder.encode_texts(list(captions)), dim=-1)
        return (img * txt).sum(-1)


def load_generator(
    denoiser_dir: str | Path, tower: str | Path, cache_dir: str | None = None, device: str = "cpu"
) -> tuple[GenHancerModel, int]:
    """The run's tower (from ``tower``, an HF folder), projector, denoiser and VAE as one
    :class:`GenHancerModel` in eval mode and float32 (as every tower is scored, whatever
    ``stage2.export_dtype`` saved), and the run's own sampling steps."""
    export = load_denoiser_export(denoiser_dir, cache_dir)
    if export.kind != CONTINUOUS:
        raise UserError(f"{denoiser_dir}: a {export.kind} denoiser has no flow-matching loss to score")
    meta = export.meta
    bcfg = configtools.from_dict(BackboneConfig, {**meta.backbone, "name_or_path": str(tower)}, "backbone")
    backbone = build_backbone(bcfg, cache_dir)
    want = int(export.projector.config.global_dim)
    if backbone.global_dim != want:
        raise UserError(
            f"{tower}: a {backbone.global_dim}-d global token; {denoiser_dir} was trained on {want}-d"
        )
    flow = configtools.from_dict(GenHancerSection, meta.method_config, "method").flow
    model = GenHancerModel(
        backbone,
        export.projector,
        export.denoiser,
        export.codec,
        local_token_ratio=export.local_token_ratio,
        timestep_sampler=flow.timestep_sampler,
        timestep_scale=flow.scale,
    )
    return model.eval().requires_grad_(False).to(device=device, dtype=torch.float32), export.preview_steps


class _RunFlow(FlowTask):
    """:class:`FlowTask` around a trained run: the condition handed to ``losses`` is the images'
    tower input, run through the tower and projector as in training; per-item losses are kept (in
    call order: draw by draw, chunk by chunk) for the per-image values."""

    def __init__(self, model: GenHancerModel):  # the parts are trained: no fresh init
        self.denoiser = model.denoiser
        self.projector = model.condition
        self.sampler, self.scale = model.timestep_sampler, model.timestep_scale
        self.recorded: list[torch.Tensor] = []

    def losses(self, z, noise, t, cond) -> torch.Tensor:
        out = super().losses(z, noise, t, cond)
        self.recorded.append(out)
        return out


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """[N, 3, H, W] in [-1, 1] -> RGB PIL images."""
    return [Image.fromarray(a) for a in to_uint8(x)]


@torch.no_grad()
def reconstruction_loss(
    model: GenHancerModel, unit: torch.Tensor, settings: GenerationSettings
) -> tuple[dict, list[float]]:
    """The paired held-out loss of :mod:`eval.flow_heldout` on images ``unit`` ([N, 3, H, W]
    in [0, 1]): (``heldout_loss``'s summary, the loss per image averaged over draws)."""
    device = unit.device
    post = posteriors(model.codec.vae, unit)
    task = _RunFlow(model)
    draws = [
        tuple(x.to(device) for x in d) for d in heldout_draws(post[0], task, settings.draws, settings.seed)
    ]
    codec = model.codec
    latent_kw = {"sample": codec.sample_posterior, "shift": codec.shift_factor, "scale": codec.scaling_factor}
    summary = heldout_loss(task, post, _tower_input(model, unit), draws, latent_kw)
    per_image = torch.cat(task.recorded).view(settings.draws, -1).mean(0)
    return summary, per_image.tolist()


def _tower_input(model: GenHancerModel, unit: torch.Tensor) -> torch.Tensor:
    return normalise(unit, model.backbone.image_mean, model.backbone.image_std)


@torch.no_grad()
def reconstructions(
    model: GenHancerModel, unit: torch.Tensor, settings: GenerationSettings, steps: int
) -> list[Image.Image]:
    """Images sampled from the denoiser conditioned on the tower's view of ``unit``; the noise of
    each batch is seeded by ``settings.seed`` and the batch's start alone."""
    pixels = _tower_input(model, unit)
    out: list[Image.Image] = []
    for start in range(0, len(unit), settings.batch_size):
        gen = torch.Generator(unit.device).manual_seed(derive_seed("generation_sample", settings.seed, start))
        out += to_images(model.reconstruct(pixels[start : start + settings.batch_size], gen, steps))
    return out


def evaluate_generation(
    denoiser_dir: str | Path,
    tower: str | Path,
    data: CaptionedImages,
    judge: Judge,
    settings: GenerationSettings | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
) -> GenerationScore:
    """``recon_loss`` and ``clip_score`` of the run whose denoiser is ``denoiser_dir``, with the
    tower in ``tower`` (the run's own export: the pair it trained)."""
    settings = settings or GenerationSettings()
    model, own_steps = load_generator(denoiser_dir, tower, cache_dir, device)
    unit = to_unit(data.images, model.backbone.image_size).to(device)
    summary, per_image = reconstruction_loss(model, unit, settings)
    steps = settings.steps or own_steps
    cos = judge.cosines(reconstructions(model, unit, settings, steps), data.captions)
    return GenerationScore(
        recon_loss=summary["loss"],
        clip_score=100.0 * float(cos.mean()),
        loss_by_t=summary["by_t"],
        per_image_loss=per_image,
        per_image_cosine=cos.tolist(),
        steps=steps,
    )
