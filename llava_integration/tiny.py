"""The tiny preset's language model, built locally and cached: no hub, no download.

``genhancer-tiny:llm`` is a small ``LlamaForCausalLM`` with a word-level tokenizer over the toy
world's vocabulary and the template words, saved in the standard format so the real loading
code (``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained``) runs on it. It gets a brief
next-token pretraining on toy captions and text-only chat, the stand-in for Vicuna's language
knowledge, so the projector-only pretraining stage has a language model worth aligning to.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from genhancer.toyworld.models import build_cached, default_cache_dir
from genhancer.toyworld.world import ToyWorld, caption
from llava_integration.templates import TEMPLATES, Turn, render
from llava_integration.toydata import corpus, text_only_sample

TINY_LLM = "genhancer-tiny:llm"

TINY_LLM_RECIPE = {
    "hidden": 128,
    "layers": 2,
    "heads": 4,
    "intermediate": 256,
    "max_positions": 512,
    "lm_steps": 100,
    "batch_size": 16,
    "lr": 3e-3,
    "num_texts": 2000,
    "seed": 4242,
}

SPECIAL = ("<unk>", "<s>", "</s>", "<pad>")


def build_tokenizer(extra_texts: list[str] | None = None):
    """A word-level fast tokenizer (Llama-like: adds ``<s>``; ``</s>`` ends a turn; no ``<image>``).

    ``<image>`` is deliberately absent: model assembly adds it, as it must for Vicuna.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for text in corpus() + list(extra_texts or []):
        words.update(w for w, _ in pre.pre_tokenize_str(text))
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken("\n", normalized=False)])  # the plain template ends captions with it
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def llm_config(tokenizer, recipe: dict = TINY_LLM_RECIPE):
    from transformers import LlamaConfig

    r = recipe
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=r["hidden"],
        intermediate_size=r["intermediate"],
        num_hidden_layers=r["layers"],
        num_attention_heads=r["heads"],
        num_key_value_heads=r["heads"],
        max_position_embeddings=r["max_positions"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _lm_texts(n: int, seed: int) -> list[str]:
    """Toy captions (plain form) and text-only vicuna chats: what "pretrained" means here."""

    world = ToyWorld(seed=seed + 1, image_size=16)
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        if i % 2:
            texts.append(caption(world.scene(i)) + "\n")
        else:
            q, a = text_only_sample(rng)[0]
            texts.append(render(TEMPLATES["vicuna_v1"], [Turn("human", q), Turn("gpt", a)])[0])
    return texts


def build_tiny_llm(out_dir: Path, recipe: dict = TINY_LLM_RECIPE) -> None:
    """Build, briefly pretrain (next-token loss) and save the tiny LM and its tokenizer."""
    from transformers import LlamaForCausalLM

    r = recipe
    torch.manual_seed(r["seed"])
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(llm_config(tokenizer, r))
    enc = tokenizer(_lm_texts(r["num_texts"], r["seed"]), padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    gen = torch.Generator().manual_seed(r["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.0)
    model.train()
    for _ in range(r["lm_steps"]):
        idx = torch.randint(0, len(labels), (r["batch_size"],), generator=gen)
        out = model(
            input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx], labels=labels[idx]
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def resolve_tiny_llm(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """Map ``genhancer-tiny:llm`` to its cached dir (built once, then cached); others pass through."""
    if name_or_path != TINY_LLM:
        return name_or_path

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    # the vocabulary comes from the toy corpus: a changed corpus must not reuse a stale tokenizer
    words = hashlib.sha256("\x1f".join(corpus()).encode()).hexdigest()[:12]
    recipe = {**TINY_LLM_RECIPE, "corpus": words}
    return str(build_cached(cache, "tiny-llm", recipe, lambda out: build_tiny_llm(out, recipe)))
