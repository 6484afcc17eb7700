"""Assemble, save and re-tower a LLaVA-1.5 model on transformers' ``LlavaForConditionalGeneration``.

The result is a stock ``LlavaForConditionalGeneration`` plus a ``LlavaProcessor`` (image
processor padding to square with its mean, tokenizer with ``<image>``, the ``vicuna_v1`` chat
template), so ``from_pretrained``, lmms-eval's ``llava_hf`` and any HF tooling load it.
Pieces are moved into a meta-device skeleton rather than copied, so a 7B LM is never held twice.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from enhance.towers.resolve import resolve_tower
from enhance.towers.spec import is_tower_spec
from genhancer.runtime.checkpoint import atomic_write_text
from genhancer.runtime.errors import UserError
from genhancer.toyworld.models import resolve_tiny
from llava_integration.config import ModelConfig
from llava_integration.shapes import llm_config, tower_config
from llava_integration.templates import IMAGE_TOKEN, TEMPLATES, chat_template_jinja
from llava_integration.tiny import resolve_tiny_llm

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROJECTOR_FILE = "projector.safetensors"
PROJECTOR_META = "projector.json"


@dataclass
class Tower:
    """A loaded vision tower: the model, its config, and where its image processor settings came from."""

    model: torch.nn.Module | None
    config: object
    image_processor: object | None
    source: str

    @property
    def family(self) -> str:
        return "siglip" if "siglip" in self.config.model_type else "clip"

    @property
    def grid(self) -> int:
        return self.config.image_size // self.config.patch_size


def _resolve(name: str, cache_dir: str | None, option: str = "model.vision_tower") -> str:

    if is_tower_spec(name):  # hf:REPO/SUB@REV or WEIGHTS::BASE (enhance.towers)
        return resolve_tower(name, cache_dir, option)
    return resolve_tiny(resolve_tiny_llm(name, cache_dir), cache_dir)


def _hub_kwargs(cfg: ModelConfig) -> dict:
    return {"revision": cfg.revision} if cfg.revision else {}


def load_tower(
    name_or_path: str, cache_dir: str | None = None, dtype: torch.dtype = torch.float32, **hub
) -> Tower:
    """A CLIP or SigLIP vision tower from an export dir, a full dual-encoder dir, or an HF id."""
    from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModel, SiglipVisionModel

    path = _resolve(name_or_path, cache_dir)
    try:
        config = AutoConfig.from_pretrained(path, **hub)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a vision tower from '{name_or_path}': {exc}") from None
    if config.model_type in ("clip", "siglip"):
        config = config.vision_config
    if config.model_type not in ("clip_vision_model", "siglip_vision_model"):
        raise UserError(
            f"'{name_or_path}' holds a {config.model_type} model; the vision tower must be CLIP or SigLIP"
        )
    cls = SiglipVisionModel if config.model_type == "siglip_vision_model" else CLIPVisionModel
    model = cls.from_pretrained(path, config=config, dtype=dtype, **hub)
    try:
        image_processor = AutoImageProcessor.from_pretrained(path, **hub)
    except (OSError, ValueError) as exc:
        raise UserError(f"'{name_or_path}' has no image processor config: {exc}") from None
    return Tower(model.eval(), model.config, image_processor, name_or_path)


def num_image_tokens(llava_config) -> int:
    """Image tokens per image: the patch grid, plus CLIP's CLS unless "default" drops it."""
    vc = llava_config.vision_config
    grid = vc.image_size // vc.patch_size
    cls = 0 if "siglip" in vc.model_type else 1
    drop = 1 if llava_config.vision_feature_select_strategy == "default" else 0
    return grid * grid + cls - drop


def select_strategy(cfg: ModelConfig, tower_config) -> str:
    """CLIP prepends a CLS token that LLaVA drops ("default"); SigLIP has none ("full")."""
    if cfg.vision_feature_select_strategy != "auto":
        return cfg.vision_feature_select_strategy
    return "full" if "siglip" in tower_config.model_type else "default"


def build_image_processor(source, pad: bool = True):
    """LLaVA's image processor: the tower's resize/crop/normalisation, padding to square first
    (``image_aspect_ratio: pad``) with the mean colour, as LLaVA-1.5 does.

    The PIL backend, because LLaVA-1.5 reads images with ``CLIPImageProcessor``'s PIL resize: the
    torchvision one differs by 1 or 2 /255 on about half a percent of pixel values (docs/llava.md)."""
    from transformers import LlavaImageProcessorPil

    def get(name, default=None):
        return getattr(source, name, default)

    size = dict(get("size") or {})
    size = {k: v for k, v in size.items() if v is not None}
    crop = {k: v for k, v in dict(get("crop_size") or {}).items() if v is not None}
    kwargs = {
        "do_pad": pad,
        "size": size,
        "do_center_crop": bool(get("do_center_crop", False)) and bool(crop),
        "image_mean": list(get("image_mean")),
        "image_std": list(get("image_std")),
        "do_rescale": bool(get("do_rescale", True)),
        "rescale_factor": float(get("rescale_factor", 1 / 255)),
        "do_normalize": bool(get("do_normalize", True)),
        "do_convert_rgb": True,
    }
    if crop:
        kwargs["crop_size"] = crop
    resample = get("resample")
    if resample is not None:
        kwargs["resample"] = resample
    return LlavaImageProcessorPil(**kwargs)


def prepare_tokenizer(tokenizer) -> None:
    """Add ``<image>`` (and a pad token when missing, as llava-hf does) to the LM's tokenizer."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})


def build_processor(tokenizer, image_processor, tower_config, strategy: str):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=tower_config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1 if "siglip" not in tower_config.model_type else 0,
        chat_template=chat_template_jinja(TEMPLATES["vicuna_v1"]),
        image_token=IMAGE_TOKEN,
    )


def llava_config(tower_config, text_config, tokenizer, cfg: ModelConfig):
    from transformers import LlavaConfig

    strategy = select_strategy(cfg, tower_config)
    grid = tower_config.image_size // tower_config.patch_size
    return LlavaConfig(
        vision_config=tower_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=grid * grid,
        projector_hidden_act="gelu",  # mlp2x_gelu
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )


def load_llm(cfg: ModelConfig, cache_dir: str | None, dtype: torch.dtype):
    """(language model, tokenizer); the tokenizer already holds ``<image>`` and a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _resolve(cfg.llm, cache_dir)
    hub = _hub_kwargs(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, **hub)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of '{cfg.llm}': {exc}") from None
    prepare_tokenizer(tokenizer)
    if cfg.random_init_llm:
        config = llm_config(cfg.llm)
        if config is None:
            raise UserError(f"model.random_init_llm needs a known LM shape; '{cfg.llm}' is not one")
        config.attn_implementation = cfg.attn_implementation
        llm = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        try:
            llm = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=cfg.attn_implementation, **hub
            )
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the language model '{cfg.llm}': {exc}") from None
    if llm.get_input_embeddings().num_embeddings < len(tokenizer):
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    llm.config.pad_token_id = tokenizer.pad_token_id
    return llm, tokenizer


def assemble(tower: Tower, llm, tokenizer, cfg: ModelConfig, seed: int = 0, pad: bool = True):
    """(LlavaForConditionalGeneration, LlavaProcessor) from a loaded tower and LM.

    The projector is freshly initialised (seeded) unless ``cfg.pretrained_projector`` names one.
    """
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = llava_config(tower.config, llm.config, tokenizer, cfg)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = tower.model
    model.model.language_model = llm.get_decoder() if hasattr(llm, "get_decoder") else llm.model
    model.lm_head = llm.get_output_embeddings()
    torch.manual_seed(seed)
    dtype = llm.get_input_embeddings().weight.dtype
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.get_input_embeddings().weight
    leftover = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if leftover:
        raise RuntimeError(f"assembly left parameters on the meta device: {leftover[:5]}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    if cfg.pretrained_projector:
        load_projector(model, cfg.pretrained_projector)
    processor = build_processor(
        tokenizer,
        build_image_processor(tower.image_processor, pad=pad),
        tower.config,
        select_strategy(cfg, tower.config),
    )
    return model.eval(), processor


def build(cfg: ModelConfig, cache_dir: str | None = None, seed: int = 0, pad: bool = True):
    """Load tower and LM named by ``cfg`` and assemble them (``pad``: pad images to square)."""
    dtype = DTYPES[cfg.dtype]
    torch.manual_seed(seed)  # new embedding rows (<image>, <pad>) draw from the global RNG
    tower = load_tower(cfg.vision_tower, cache_dir, dtype, **_hub_kwargs(cfg))
    llm, tokenizer = load_llm(cfg, cache_dir, dtype)
    if cfg.gradient_checkpointing and torch.cuda.is_available():
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return assemble(tower, llm, tokenizer, cfg, seed, pad)


def build_meta(cfg: ModelConfig, added_tokens: int = 2):
    """The model on the meta device from known shapes (downloads nothing): for --describe and tests."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = llm_config(cfg.llm)
    vision = tower_config(cfg.vision_tower)
    if text is None or vision is None:
        missing = cfg.llm if text is None else cfg.vision_tower
        raise UserError(f"no known shape for '{missing}'; --describe builds known ids only")
    text.vocab_size += added_tokens  # <image> and <pad>
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=text.vocab_size - added_tokens,
        projector_hidden_act="gelu",
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=select_strategy(cfg, vision),
    )
    with torch.device("meta"):
        return LlavaForConditionalGeneration(config)


def parameter_counts(model) -> dict[str, int]:
    def count(m):
        return sum(p.numel() for p in m.parameters())

    parts = {
        "vision_tower": count(model.model.vision_tower),
        "projector": count(model.model.multi_modal_projector),
        "language_model": count(model.model.language_model) + count(model.lm_head),
    }
    parts["total"] = sum(parts.values())
    return parts


# --- saving, projector hand-over, tower swap -----------------------------------------------


def save(model, processor, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write ``from_pretrained``-loadable model + processor into ``out_dir`` (temp dir, then rename).

    ``state_dict`` replaces the module's own weights (ZeRO-3 runs pass the gathered ones)."""

    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    processor.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def save_projector(model, out_dir: str | Path, tower_source: str, state_dict: dict | None = None) -> Path:
    """The pretrain stage's product: projector weights plus the shapes a finetune must match.

    ``state_dict`` (the whole model's, gathered under ZeRO-3) replaces the module's own weights."""

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "model.multi_modal_projector."
    if state_dict is not None:
        source = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    else:
        source = model.model.multi_modal_projector.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in source.items()}
    tmp = out / f".{PROJECTOR_FILE}.tmp"
    save_file(state, tmp)
    os.replace(tmp, out / PROJECTOR_FILE)
    vc = model.config.vision_config
    meta = {
        "vision_hidden_size": vc.hidden_size,
        "text_hidden_size": model.config.text_config.hidden_size,
        "grid": vc.image_size // vc.patch_size,
        "vision_tower": tower_source,
    }
    atomic_write_text(out / PROJECTOR_META, json.dumps(meta, indent=2))  # last: marks the folder complete
    return out


def load_projector(model, path: str | Path) -> None:
    """Load a pretrain stage's projector, refusing one trained for other widths."""

    from safetensors.torch import load_file

    path = Path(path)
    if not (path / PROJECTOR_FILE).is_file():
        raise UserError(f"--projector {path}: no {PROJECTOR_FILE} there (point it at DIR/pretrain of a run)")
    meta = json.loads((path / PROJECTOR_META).read_text()) if (path / PROJECTOR_META).is_file() else {}
    vc = model.config.vision_config
    want = {"vision_hidden_size": vc.hidden_size, "text_hidden_size": model.config.text_config.hidden_size}
    bad = {k: (meta[k], v) for k, v in want.items() if k in meta and meta[k] != v}
    if bad:
        detail = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in bad.items())
        raise UserError(f"--projector {path} does not fit this model ({detail}: projector vs model)")
    proj = model.model.multi_modal_projector
    state = load_file(path / PROJECTOR_FILE)
    try:
        proj.load_state_dict({k: v.to(proj.linear_1.weight.dtype) for k, v in state.items()})
    except RuntimeError as exc:
        raise UserError(f"--projector {path} does not fit this model: {exc}") from None


def check_tower_fits(model_config, tower_config, where: str) -> None:
    """A tower can replace another only with the same width (projector input) and patch grid."""
    old = model_config.vision_config
    problems = []
    if tower_config.hidden_size != old.hidden_size:
        problems.append(
            f"hidden size {tower_config.hidden_size} vs {old.hidden_size} expected by the projector"
        )
    new_grid = tower_config.image_size // tower_config.patch_size
    old_grid = old.image_size // old.patch_size
    if new_grid != old_grid:
        problems.append(f"patch grid {new_grid}x{new_grid} vs {old_grid}x{old_grid}")
    if problems:
        raise UserError(f"vision tower {where} does not fit the model: {'; '.join(problems)}")


def swap_tower(
    model_dir: str | Path, tower_path: str, out_dir: str | Path, cache_dir: str | None = None
) -> Path:
    """Replace the tower of a trained LLaVA without retraining (for inspection: the paper retrains,
    because the projector and LM were aligned to the old tower's features)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir}: not a saved LLaVA model (no config.json)")
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    dtype = model.model.multi_modal_projector.linear_1.weight.dtype
    tower = load_tower(tower_path, cache_dir, dtype)
    check_tower_fits(model.config, tower.config, tower_path)
    if tower.family != ("siglip" if "siglip" in model.config.vision_config.model_type else "clip"):
        raise UserError(
            f"vision tower {tower_path} is {tower.family}, the model's is not: CLS handling differs; retrain instead"
        )
    model.model.vision_tower = tower.model
    model.config.vision_config = tower.config
    processor.image_processor = build_image_processor(tower.image_processor)
    return save(model, processor, out_dir)
