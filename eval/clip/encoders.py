"""One scoring interface over every dual encoder the leaderboard compares.

The CLIP-level benchmarks need three things from a model: a global embedding per image, an
embedding per text, and the model's own image-text logits. This module gives HF CLIP (any
``export/hf`` folder included), HF SigLIP, open_clip (architecture name + pretrained tag, or our
``export/open_clip/`` folder) and ``genhancer-tiny:clip`` that one interface.

The image embedding is the *same global token* the enhancer conditions on: it is computed by the
``enhance.backbones`` classes (CLIP: ``visual_projection(pooler_output)``; SigLIP: the pooled
output; open_clip: ``model.visual``'s pooled output), so "what the probe reads" and "what
GenHancer trained" cannot drift apart.

Model specs (``--clip NAME=SPEC``):

* a local folder or HF id holding a CLIP or SigLIP model (``config.json`` model type ``clip`` /
  ``siglip``); a run folder whose ``export/hf`` exists is accepted too;
* a folder holding ``open_clip_config.json`` + ``open_clip_model.safetensors`` (our export);
* ``open_clip:ARCH[:PRETRAINED]`` (e.g. ``open_clip:ViT-B-32:laion2b_s34b_b79k``);
* ``genhancer-tiny:clip`` (the cached tiny base tower);
* ``hf:ORG/NAME[/SUBFOLDER][@REVISION]`` and ``WEIGHTS::BASE`` (:mod:`enhance.towers.spec`).
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from enhance.backbones.hf import HFCLIPBackbone, HFSiglipBackbone
from enhance.backbones.openclip import OpenCLIPBackbone, register_model_config
from enhance.towers.resolve import resolve_tower
from enhance.towers.spec import is_tower_spec
from genhancer.runtime.errors import UserError
from genhancer.toyworld.models import TINY_CLIP_RECIPE, resolve_tiny

#: Every dual encoder is scored in this dtype, whatever dtype its weights were saved in: the
#: official MMVP-VLM evaluation casts towers with ``model.eval().float()``, and a bf16 tower scored
#: in bf16 can flip near-tied pairs.
EVAL_DTYPE = torch.float32
OPEN_CLIP_PREFIX = "open_clip:"
TINY_PREFIX = "genhancer-tiny:"
SUPPORTED_HF_TYPES = ("clip", "siglip")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"bad device '{device}': {_first_line(exc)}") from None


class DualEncoder:
    """A frozen image/text dual encoder in eval mode.

    Attributes:
        spec: the model spec it was loaded from.
        kind: ``clip`` | ``siglip`` | ``open_clip``.
        revision: what identifies the weights (an HF commit, or a content hash of local files).
        image_size: the tower's input resolution.
        weights_dtype: the dtype the weights were saved in (``results.json`` records it).
        eval_dtype: the dtype they are scored in (always ``float32``, see :data:`EVAL_DTYPE`).
    """

    kind: str = ""

    def __init__(
        self,
        spec: str,
        model: torch.nn.Module,
        global_token: Callable[[torch.Tensor], torch.Tensor],
        image_size: int,
        revision: str,
        device: torch.device,
        batch_size: int = 64,
        progress: bool = False,
    ):
        self.spec = spec
        self.weights_dtype = parameter_dtype(model)  # before the cast below
        self.model = model.eval().to(device=device, dtype=EVAL_DTYPE)
        self.eval_dtype = str(EVAL_DTYPE).removeprefix("torch.")
        self.global_token = global_token
        self.image_size = image_size
        self.revision = revision
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self._text_cache: dict[str, torch.Tensor] = {}

    # --- subclass hooks -----------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def _text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def logit_scale_bias(self) -> tuple[float, float]:
        """(scale, bias) of the model's own logits; bias is 0 for softmax (CLIP) models."""
        raise NotImplementedError

    # --- public API ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], desc: str = "images") -> torch.Tensor:
        """Global tokens ``[N, D]`` (float32, CPU, not normalised) for RGB PIL images."""
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc=desc, disable=not self.progress, leave=False):
            batch = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            pixels = self.preprocess(batch).to(self.device, torch.float32)
            out.append(self.global_token(pixels).float().cpu())
        if not out:
            return torch.zeros(0, 0)
        return torch.cat(out)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings ``[N, D]`` (float32, CPU, not normalised); each distinct text is encoded once."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            feats = self._text_batch(chunk).float().cpu()
            for text, feat in zip(chunk, feats):
                self._text_cache[text] = feat
        if not texts:
            return torch.zeros(0, 0)
        return torch.stack([self._text_cache[t] for t in texts])

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """The model's own image-text logits ``[N_images, N_texts]``.

        Computed in float64 on CPU from the embeddings, so the same embeddings give the same
        decisions on any device (CPU/GPU differences stay in the embeddings' last bits).
        """
        scale, bias = self.logit_scale_bias()
        img = torch.nn.functional.normalize(image_emb.double().cpu(), dim=-1)
        txt = torch.nn.functional.normalize(text_emb.double().cpu(), dim=-1)
        return scale * img @ txt.T + bias


def parameter_dtype(model: torch.nn.Module) -> str:
    """The dtype most floating-point parameters of ``model`` have, e.g. ``bfloat16``."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            key = str(p.dtype).removeprefix("torch.")
            counts[key] = counts.get(key, 0) + p.numel()
    return max(counts, key=counts.get) if counts else "unknown"


_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def stored_dtype(folder: Path) -> str | None:
    """The floating dtype most values in ``folder``'s ``*.safetensors`` files are stored in, read
    from their headers only (a loader may already have converted the weights), or None."""

    counts: dict[str, int] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name == "__metadata__" or info.get("dtype") not in _SAFETENSORS_DTYPES:
                continue
            n = 1
            for d in info.get("shape", []):
                n *= d
            key = _SAFETENSORS_DTYPES[info["dtype"]]
            counts[key] = counts.get(key, 0) + n
    return max(counts, key=counts.get) if counts else None


def _unwrap(features) -> torch.Tensor:
    """transformers 5 returns a model output (projected ``pooler_output``); 4.x a tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


class HFDualEncoder(DualEncoder):
    """HF ``CLIPModel`` / ``SiglipModel`` with its processor."""

    def __init__(self, spec: str, model, processor, revision: str, device, batch_size=64, progress=False):

        self.kind = "siglip" if model.config.model_type == "siglip" else "clip"
        size = model.config.vision_config.image_size
        backbone_cls = HFSiglipBackbone if self.kind == "siglip" else HFCLIPBackbone
        backbone = backbone_cls(model, processor, size)
        super().__init__(
            spec, model, lambda px: backbone(px).global_token, size, revision, device, batch_size, progress
        )
        self.processor = processor
        tcfg = model.config.text_config
        self._max_len = min(int(processor.tokenizer.model_max_length), int(tcfg.max_position_embeddings))

    def preprocess(self, images):
        return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def _text_batch(self, texts):
        tok = self.processor.tokenizer
        if self.kind == "siglip":
            # SigLIP was trained on max-length padded text without an attention mask.
            enc = tok(list(texts), padding="max_length", truncation=True, max_length=self._max_len)
            ids = torch.tensor(enc["input_ids"], device=self.device)
            return _unwrap(self.model.get_text_features(input_ids=ids))
        enc = tok(list(texts), padding=True, truncation=True, max_length=self._max_len, return_tensors="pt")
        return _unwrap(
            self.model.get_text_features(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
            )
        )

    def logit_scale_bias(self):
        scale = float(self.model.logit_scale.detach().double().exp())
        bias = float(self.model.logit_bias.detach().double()) if self.kind == "siglip" else 0.0
        return scale, bias


class OpenCLIPDualEncoder(DualEncoder):
    """An open_clip ``CLIP``/``CustomTextCLIP`` with its eval transform and tokenizer."""

    kind = "open_clip"

    def __init__(self, spec, model, model_name, revision, device, batch_size=64, progress=False):
        import open_clip

        size = model.visual.image_size
        size = int(size[0] if isinstance(size, tuple | list) else size)
        backbone = OpenCLIPBackbone(model, model_name, size)
        super().__init__(
            spec, model, lambda px: backbone(px).global_token, size, revision, device, batch_size, progress
        )
        pp = model.visual.preprocess_cfg
        self._transform = open_clip.image_transform(
            size,
            is_train=False,
            mean=pp.get("mean"),
            std=pp.get("std"),
            interpolation=pp.get("interpolation"),
        )
        self._tokenizer = open_clip.get_tokenizer(model_name)

    def preprocess(self, images):
        return torch.stack([self._transform(im) for im in images])

    def _text_batch(self, texts):
        return self.model.encode_text(self._tokenizer(list(texts)).to(self.device))

    def logit_scale_bias(self):
        scale = float(self.model.logit_scale.detach().double().exp())
        bias = getattr(self.model, "logit_bias", None)
        return scale, float(bias.detach().double()) if bias is not None else 0.0


# --- loading ----------------------------------------------------------------------------------


def files_fingerprint(folder: Path, patterns: Sequence[str] = ("*.safetensors", "*.bin", "*.json")) -> str:
    """A short hash of a folder's weight/config files (name, size, mtime): cheap, and changes on retrain."""
    h = hashlib.sha256()
    for pattern in patterns:
        for f in sorted(folder.glob(pattern)):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _looks_like_path(spec: str) -> bool:
    # HF ids are "name" or "org/name"; anything with more slashes or a path prefix is a path.
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec


def resolve_spec(spec: str, cache_dir: str | None = None) -> tuple[str, str]:
    """(``kind``, location) for a spec without loading weights; raise UserError for a missing path.

    ``kind`` is ``hf`` (local dir or hub id), ``open_clip_dir``, ``open_clip`` or ``tiny``.
    """
    if is_tower_spec(spec):  # hf:REPO/SUB@REV or WEIGHTS::BASE: a local folder (converted once)
        return resolve_spec(resolve_tower(spec, cache_dir, "--clip"), cache_dir)
    if spec.startswith(TINY_PREFIX):
        if spec != TINY_PREFIX + "clip":
            raise UserError(f"unknown tiny model '{spec}' for the leaderboard; use {TINY_PREFIX}clip")
        return "tiny", spec
    if spec.startswith(OPEN_CLIP_PREFIX):
        return "open_clip", spec[len(OPEN_CLIP_PREFIX) :]
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path '{spec}' is a file; give the model folder")
        if (path / "open_clip_config.json").is_file():
            return "open_clip_dir", str(path)
        if not (path / "config.json").is_file():  # an enhance export folder (export/, export/steps/N/)
            if (path / "hf" / "config.json").is_file():
                return "hf", str(path / "hf")
            if (path / "open_clip" / "open_clip_config.json").is_file():
                return "open_clip_dir", str(path / "open_clip")
        if not (path / "config.json").is_file() and (path / "export" / "hf" / "config.json").is_file():
            return "hf", str(path / "export" / "hf")  # a run folder: use its HF export
        if not (path / "config.json").is_file():
            raise UserError(
                f"'{spec}' is not a vision-language model folder: no config.json "
                "(nor open_clip_config.json, nor export/hf/config.json)"
            )
        return "hf", str(path)
    if _looks_like_path(spec):
        raise UserError(f"model path not found: {spec}")
    return "hf", spec


def model_fingerprint(spec: str, cache_dir: str | None = None) -> str:
    """What identifies a model's weights for the results cache (without loading it)."""
    kind, where = resolve_spec(spec, cache_dir)
    if kind in ("hf", "open_clip_dir") and Path(where).is_dir():
        return f"{Path(where).resolve()}@{files_fingerprint(Path(where))}"
    if kind == "tiny":
        blob = json.dumps(TINY_CLIP_RECIPE, sort_keys=True).encode()
        return f"{spec}@{hashlib.sha256(blob).hexdigest()[:12]}"
    return where


def _load_hf(spec: str, where: str, revision: str, trust_remote_code: bool, **kw) -> HFDualEncoder:
    from transformers import AutoConfig, AutoProcessor, CLIPModel, SiglipModel

    kwargs = {"revision": revision} if revision else {}
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model '{spec}': {_first_line(exc)}") from None
    if config.model_type not in SUPPORTED_HF_TYPES:
        raise UserError(
            f"'{spec}' holds a '{config.model_type}' model, not a vision-language dual encoder "
            f"(supported model types: {', '.join(SUPPORTED_HF_TYPES)}, or an open_clip folder)"
        )
    model_cls = SiglipModel if config.model_type == "siglip" else CLIPModel
    try:
        model = model_cls.from_pretrained(where, trust_remote_code=trust_remote_code, **kwargs)
        processor = AutoProcessor.from_pretrained(where, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model '{spec}': {_first_line(exc)}") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise UserError(f"'{spec}' has no processor with both an image processor and a tokenizer")
    local = Path(where)
    rev = (
        files_fingerprint(local)
        if local.is_dir()
        else (getattr(config, "_commit_hash", None) or revision or "main")
    )
    enc = HFDualEncoder(spec, model, processor, str(rev), **kw)
    if local.is_dir():  # the files say what was saved, whatever dtype the loader produced
        enc.weights_dtype = stored_dtype(local) or enc.weights_dtype
    return enc


def _load_open_clip_dir(spec: str, where: str, **kw) -> OpenCLIPDualEncoder:
    import open_clip

    folder = Path(where)
    weights = folder / "open_clip_model.safetensors"
    if not weights.is_file():
        raise UserError(f"open_clip folder '{spec}' lacks {weights.name}")
    try:
        meta = json.loads((folder / "open_clip_config.json").read_text())
        name, cfg = meta["model_name"], meta["model_cfg"]
    except (ValueError, KeyError) as exc:
        raise UserError(f"{folder / 'open_clip_config.json'} is malformed: {_first_line(exc)}") from None
    if cfg is not None:
        # Register the exact architecture that was exported under its own name.
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / f"{name}.json"
            cfg_path.write_text(json.dumps(cfg))
            open_clip.add_model_config(cfg_path)
    try:
        model = open_clip.create_model(name, pretrained=str(weights), weights_only=True)
    except (OSError, RuntimeError, KeyError) as exc:
        raise UserError(f"cannot load open_clip folder '{spec}': {_first_line(exc)}") from None
    enc = OpenCLIPDualEncoder(spec, model, name, files_fingerprint(folder), **kw)
    enc.weights_dtype = stored_dtype(folder) or enc.weights_dtype  # open_clip loads it as float32
    return enc


def _load_open_clip(spec: str, where: str, **kw) -> OpenCLIPDualEncoder:
    import open_clip

    if where.startswith("hf-hub:"):
        name, pretrained = where, None
    else:
        name, _, pretrained = where.partition(":")
        name = register_model_config(name)
    if not name.startswith("hf-hub:") and name not in open_clip.list_models():
        raise UserError(f"unknown open_clip model '{name}' in '{spec}'; see open_clip.list_models()")
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None, weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot load open_clip model '{spec}': {_first_line(exc)}") from None
    return OpenCLIPDualEncoder(spec, model, name, pretrained or "random-init", **kw)


def load_encoder(
    spec: str,
    device: str = "auto",
    batch_size: int = 64,
    cache_dir: str | None = None,
    revision: str = "",
    trust_remote_code: bool = False,
    progress: bool = False,
) -> DualEncoder:
    """Load the model named by ``spec`` (see the module docstring); errors name the spec."""
    kind, where = resolve_spec(spec, cache_dir)
    kw = {"device": resolve_device(device), "batch_size": batch_size, "progress": progress}
    if kind == "tiny":
        enc = _load_hf(spec, resolve_tiny(spec, cache_dir or None), "", False, **kw)
        enc.revision = model_fingerprint(spec).split("@")[-1]
        return enc
    if kind == "hf":
        return _load_hf(spec, where, revision, trust_remote_code, **kw)
    if kind == "open_clip_dir":
        return _load_open_clip_dir(spec, where, **kw)
    return _load_open_clip(spec, where, **kw)
