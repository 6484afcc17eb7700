"""Where each model looks: the statement score's gradient over the patch tokens, drawn on the image.

The score is the model's own image-text logit (scale x cosine of the global token and the text
embedding). The map is the norm of the score's gradient at each patch token, taken at the input
of the tower's last block: the global token is read out after that block, so this is the last
place where each patch still has its own token, and the norm says how strongly a change there
would move the score. (Gradient x activation was tried: on the tiny towers its sign flips
between images and a uniform background offset hides the objects; the gradient norm marks the
shapes consistently.) Each map is stretched to [0, 1] (its own min to its own max), so the two
panels compare *where*, not *how much*; the raw scores are in the captions.

Works for every :class:`eval.clip.encoders.DualEncoder` kind (HF CLIP, SigLIP, open_clip): it uses
the encoder's own preprocessing and global-token hooks (``preprocess``, ``global_token``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from demo.images import open_image, square_view
from demo.models import SIDES, ModelRegistry
from genhancer.runtime.errors import UserError

DISPLAY_SIZE = 256


@dataclass
class HeatmapView:
    side: str
    overlay: Image.Image | None
    relevance: np.ndarray | None  # [grid, grid] in [0, 1]
    score: float | None
    error: str = ""

    @property
    def caption(self) -> str:
        if self.error:
            return self.error
        return f"score (logit) {self.score:.2f}"


def _blocks(model) -> torch.nn.ModuleList:
    """The tower's transformer blocks (HF CLIP/SigLIP, open_clip)."""
    vision = getattr(model, "vision_model", None)
    if vision is not None:
        return vision.encoder.layers
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "transformer"):
        return visual.transformer.resblocks
    raise UserError(f"heat map: no transformer blocks found in {type(model).__name__}")


def patch_relevance(encoder, image: Image.Image, text: str) -> tuple[np.ndarray, float]:
    """``(relevance [grid, grid] in [0, 1], score)`` of ``text`` (prefix included) for ``image``."""
    blocks = _blocks(encoder.model)
    # the input of the last block = the output of the one before (or of the patch embedding)
    anchor = blocks[-2] if len(blocks) >= 2 else None
    captured: dict[str, torch.Tensor] = {}
    # The hook sits on a model other requests share: it acts only on this thread's forward pass,
    # so a concurrent pair test or heat map on the same encoder is left alone.
    owner = threading.get_ident()

    def grab(_module, _inputs, output):
        if threading.get_ident() != owner:
            return None
        tokens = output[0] if isinstance(output, tuple) else output
        leaf = tokens.detach().requires_grad_(True)
        captured["tokens"] = leaf
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    def grab_input(_module, args, kwargs):
        if threading.get_ident() != owner:
            return None
        if args:
            leaf = args[0].detach().requires_grad_(True)
            captured["tokens"] = leaf
            return (leaf, *args[1:]), kwargs
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        leaf = kwargs[key].detach().requires_grad_(True)
        captured["tokens"] = leaf
        return args, {**kwargs, key: leaf}

    if anchor is not None:
        handle = anchor.register_forward_hook(grab)
    else:
        handle = blocks[0].register_forward_pre_hook(grab_input, with_kwargs=True)
    try:
        text_emb = encoder.encode_texts([text]).to(encoder.device)
        pixels = encoder.preprocess([image]).to(encoder.device, torch.float32)
        with torch.enable_grad():
            global_token = encoder.global_token(pixels).float()
            cos = torch.nn.functional.cosine_similarity(global_token, text_emb.float(), dim=-1)[0]
            scale, bias = encoder.logit_scale_bias()
            score = cos * scale + bias
            score.backward()
    finally:
        handle.remove()
    tokens = captured["tokens"]
    grad = tokens.grad
    if grad is None:
        raise UserError("heat map: the score does not depend on the patch tokens of this model")
    rel = grad.float().norm(dim=-1).cpu()
    if rel.shape[0] != 1:  # open_clip towers that are sequence-first: [N, B]
        rel = rel.T
    rel = rel[0]
    n = rel.shape[0]
    grid = int(round(n**0.5))
    if grid * grid != n:  # a class token in front of the patches
        rel = rel[1:]
        grid = int(round((n - 1) ** 0.5))
    if grid * grid != rel.shape[0]:
        raise UserError(f"heat map: {n} tokens do not form a square patch grid")
    rel = rel.view(grid, grid).numpy()
    span = float(rel.max() - rel.min())
    rel = (rel - rel.min()) / span if span > 0 else np.zeros_like(rel)
    return rel, float(score.detach())


def overlay(
    image: Image.Image, relevance: np.ndarray, squash: bool = False, alpha: float = 0.45
) -> Image.Image:
    """``relevance`` upsampled onto the model's view of ``image`` with a colour map."""
    from matplotlib import colormaps

    base = (
        image.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.BICUBIC)
        if squash
        else square_view(image, DISPLAY_SIZE)
    )
    heat = Image.fromarray((relevance * 255).astype(np.uint8)).resize(
        (DISPLAY_SIZE, DISPLAY_SIZE), Image.BILINEAR
    )
    colours = (colormaps["inferno"](np.asarray(heat) / 255.0)[..., :3] * 255).astype(np.uint8)
    return Image.blend(base.convert("RGB"), Image.fromarray(colours), alpha)


def heatmap_views(registry: ModelRegistry, image, statement: str | None) -> tuple[list[HeatmapView], str]:
    """What the heat-map button computes: one view per side, plus a page message ('' when fine)."""
    cfg = registry.cfg
    try:
        img = open_image(image, "image", cfg.max_image_pixels, int(cfg.max_upload_mb * 1e6))
    except UserError as exc:
        return [], str(exc)
    statement = (statement or "").strip()
    if not statement:
        return [], "write a statement to explain (e.g. 'the arrow points left')"
    views = []
    for side in SIDES:
        try:
            encoder = registry.encoder(side)
            rel, score = patch_relevance(encoder, img, cfg.prompt_prefix + statement)
            views.append(HeatmapView(side, overlay(img, rel, squash=encoder.kind == "siglip"), rel, score))
        except UserError as exc:
            views.append(HeatmapView(side, None, None, None, str(exc)))
    return views, ""
