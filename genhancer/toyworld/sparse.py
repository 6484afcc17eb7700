"""A tiny CLIP pretrained on *sparse* toy-world captions: the reproduction's "original" model.

Why: GenHancer claims to put into CLIP's global token fine detail that contrastive pretraining
left out. Real alt-text names what an object is and what colour it is far more often than how
many there are, which way they point or where they stand. :func:`sparse_caption` imitates that:
size, colour and shape are always stated; count, orientation and position each only with
probability ``rare_prob`` (the plural noun still says "one" vs "more than one", as real text
does). The text tower therefore still learns every word (each rare phrase occurs in about a
tenth of the captions), while the image tower has little contrastive reason to encode those
attributes. The scenes themselves are the unchanged :class:`~genhancer.toyworld.world.ToyWorld`.

The model is the same ``CLIPModel`` layout as ``genhancer-tiny:clip`` (:mod:`.models`), saved in
the HF format ``enhance`` and the evaluators load, under a directory named by a hash of its recipe.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from genhancer.toyworld.models import TINY_CLIP_RECIPE, build_cached, fit_and_save_clip, tiny_clip_for
from genhancer.toyworld.world import NUMBER_WORDS, POSITION_PHRASES, Scene, ToyWorld, attributes

#: Attributes that sparse captions state only sometimes (the ones the reproduction watches).
RARE_ATTRIBUTES: tuple[str, ...] = ("count", "orientation", "position")
#: Attributes every sparse caption states.
COMMON_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size")


SPARSE_CLIP_RECIPE: dict = {
    **TINY_CLIP_RECIPE,
    "rare_prob": 0.1,
    "train_steps": 400,
    "seed": 1000,
}


def sparse_caption(scene: Scene, rng: random.Random, rare_prob: float) -> str:
    """E.g. "large red triangles" or "three large red triangles pointing up on the left".

    Word order follows :func:`genhancer.toyworld.world.caption`, so a full caption is one of the
    possible sparse captions (the evaluation statements are full captions)."""
    a = attributes(scene)
    n = int(a["count"])
    noun = str(a["shape"]) if n == 1 else f"{a['shape']}s"
    parts = []
    if rng.random() < rare_prob:
        parts.append(NUMBER_WORDS[n - 1])
    parts += [str(a["size"]), str(a["color"]), noun]
    if rng.random() < rare_prob:
        parts += ["pointing", str(a["orientation"])]
    if rng.random() < rare_prob:
        parts.append(POSITION_PHRASES[str(a["position"])])
    text = " ".join(parts)
    if scene.text is not None:
        text += f", with the word '{scene.text}'"
    return text


def build_sparse_clip(out_dir: Path, recipe: dict = SPARSE_CLIP_RECIPE) -> None:
    """Contrastively pretrain a tiny CLIP on sparse captions (one fresh caption draw per step)."""
    r = recipe
    size = r["image_size"]
    model, processor = tiny_clip_for(r)
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    # ``world``: ToyWorld nuisance options (absent from the default recipe, so its cache key and
    # weights are unchanged); the study's testbeds pretrain on the world they enhance on.
    world = ToyWorld(seed=r["seed"], image_size=size, **r.get("world", {}))
    samples = [world.sample(i) for i in range(r["num_images"])]
    pixels = image_processor([s.image for s in samples], return_tensors="pt")["pixel_values"]
    rng = random.Random(r["seed"])

    def batch(gen: torch.Generator) -> dict:  # a fresh caption draw for every image of every step
        idx = torch.randint(0, len(samples), (r["batch_size"],), generator=gen).tolist()
        texts = [
            ("a photo of " if rng.random() < r["photo_prefix_prob"] else "")
            + sparse_caption(samples[i].scene, rng, r["rare_prob"])
            for i in idx
        ]
        tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
        return {**tokens, "pixel_values": pixels[idx]}

    fit_and_save_clip(model, processor, out_dir, r, batch)


def sparse_clip(cache_dir: str | Path, **changes: object) -> Path:
    """The cached sparse-caption CLIP for ``SPARSE_CLIP_RECIPE`` updated with ``changes``."""
    recipe = {**SPARSE_CLIP_RECIPE, **changes}
    return build_cached(Path(cache_dir), "sparse-clip", recipe, lambda d: build_sparse_clip(d, recipe))
