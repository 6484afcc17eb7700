"""Rebuild ``tokenizer.json`` (Hugging Face ``tokenizers`` format) from the npm package llama-tokenizer-js.

That package bakes the LLaMA / Llama 2 tokenizer into ``llama-tokenizer.js`` as two base64 strings: the
vocabulary (token strings in id order, joined by newlines) and the BPE merges (pairs of 16-bit
little-endian token ids, in priority order). Its ``data-conversion.py`` made them from the
``tokenizer.json`` distributed with the model, so the inverse below restores that file's vocabulary
and merges; the surrounding pipeline is the standard Llama one (``▁`` prefix, spaces as ``▁``, BPE
with byte fallback, ``<s>`` prepended). Run: ``python build_tokenizer_json.py llama-tokenizer.js``.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import struct
import sys
from pathlib import Path

SPECIAL = ("<unk>", "<s>", "</s>")


def read_tables(js: str) -> tuple[list[str], list[tuple[int, int]]]:
    """(vocabulary, merges as id pairs) from the package's JavaScript source."""
    vocab_b64 = re.search(r'const llama_vocab_base64 = "([^"]+)"', js).group(1)
    merges_b64 = re.search(r'const llama_merges_binary = "([^"]+)"', js).group(1)
    vocab = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    raw = base64.b64decode(merges_b64)
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    return vocab, list(zip(ids[0::2], ids[1::2]))


def tokenizer_json(vocab: list[str], merges: list[tuple[int, int]]) -> dict:
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "vocab": {tok: i for i, tok in enumerate(vocab)},
            "merges": [f"{vocab[a]} {vocab[b]}" for a, b in merges],
        },
    }


def main(js_path: str) -> None:
    vocab, merges = read_tables(Path(js_path).read_text(encoding="utf-8"))
    if len(vocab) != 32000 or len(set(vocab)) != len(vocab) or tuple(vocab[:3]) != SPECIAL:
        raise SystemExit(f"unexpected vocabulary in {js_path}: {len(vocab)} tokens")
    text = json.dumps(tokenizer_json(vocab, merges), ensure_ascii=False, indent=2)
    out = Path(__file__).with_name("tokenizer.json.gz")
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    print(f"{out}: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main(sys.argv[1])
