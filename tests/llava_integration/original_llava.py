"""The original LLaVA package beside ours: a side folder, a slow Llama tokenizer, one batch run there.

The side folder holds ``llava-torch`` 1.2.2.post1 (haotian-liu/LLaVA's own package) and the
versions it pins that differ from ours (transformers 4.37.2, tokenizers 0.15.1), installed with
``pip install --no-deps --target``; put first on ``PYTHONPATH`` in a subprocess it shadows our
transformers while sharing the main environment's torch, numpy, PIL and safetensors (no second
multi-GB torch, no flash-attn or bitsandbytes). ``llava_side_runner.py`` runs in it.

LLaVA loads its tokenizer with ``use_fast=False``: a SentencePiece ``tokenizer.model``. The
vendored Llama 2 tokenizer is a ``tokenizer.json`` (see ``tests/assets/llama2_tokenizer``), so
:func:`write_sentencepiece_model` writes the equivalent SentencePiece BPE model from it (each
piece scored by the rank of the first merge that makes it); ``test_original_llava.py`` checks that
the two encode thousands of strings identically.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIDE_RUNNER = HERE / "llava_side_runner.py"
LLAMA_TOKENIZER_ASSET = HERE.parents[0] / "assets" / "llama2_tokenizer"

# llava-torch 1.2.2.post1 pins transformers 4.37.2 and tokenizers 0.15.1; huggingface-hub and
# accelerate are the newest that 4.37.2 imports with; shortuuid is imported by llava's utilities.
SIDE_PINS = (
    "llava-torch==1.2.2.post1",
    "transformers==4.37.2",
    "tokenizers==0.15.1",
    "huggingface-hub==0.20.3",
    "accelerate==0.21.0",
    "shortuuid==1.0.13",
)


class SideEnvError(RuntimeError):
    """The side folder could not be built or the original package could not run."""


def side_dir() -> Path:
    """``$GENHANCER_LLAVA_SIDE`` or ``~/.cache/genhancer/llava-side``."""
    return Path(os.environ.get("GENHANCER_LLAVA_SIDE") or Path.home() / ".cache" / "genhancer" / "llava-side")


def ensure_side_env(root: Path | None = None) -> Path:
    """The side folder, installed once (``pip --no-deps --target``); ``SideEnvError`` says why not."""
    import fcntl

    root = root or side_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # one builder at a time (parallel test workers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_side_env(root)


def _build_side_env(root: Path) -> Path:
    stamp = root / "pins.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == list(SIDE_PINS):
        return root / "site"
    tmp = root / "site.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-compile",
        "--target",
        str(tmp),
        *SIDE_PINS,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SideEnvError(
            f"cannot build the original-LLaVA side folder {tmp} (needs the package index): "
            f"`{' '.join(cmd)}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    site = root / "site"
    if site.exists():
        shutil.rmtree(site)
    tmp.rename(site)
    stamp.write_text(json.dumps(list(SIDE_PINS)))
    return site


def write_sentencepiece_model(tokenizer_json: dict, out: Path) -> Path:
    """A SentencePiece BPE ``tokenizer.model`` equivalent to a Llama ``tokenizer.json``.

    Control pieces ``<unk>``/``<s>``/``</s>``, the 256 byte pieces, then normal pieces scored by
    minus the rank of the first merge producing them (SentencePiece merges the best-scored pair
    first, as ``tokenizers`` applies the lowest-ranked merge); the normaliser is Llama's (dummy
    ``▁`` prefix, spaces escaped, extra spaces kept), byte fallback on.
    """
    from transformers.utils import sentencepiece_model_pb2_new as pb

    model = tokenizer_json["model"]
    rank: dict[str, int] = {}
    for r, merge in enumerate(model["merges"]):
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        rank.setdefault(a + b, r)
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(model["vocab"])
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    kinds = pb.ModelProto.SentencePiece
    for token, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        piece = proto.pieces.add()
        piece.piece = token
        if i == 0:
            piece.type, piece.score = kinds.UNKNOWN, 0.0
        elif token in ("<s>", "</s>"):
            piece.type, piece.score = kinds.CONTROL, 0.0
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            piece.type, piece.score = kinds.BYTE, 0.0
        else:
            piece.type = kinds.NORMAL
            piece.score = -float(rank[token]) if token in rank else -1e6 - i  # single characters
    out.write_bytes(proto.SerializeToString())
    return out


def read_vendored_tokenizer_json() -> dict:
    with gzip.open(LLAMA_TOKENIZER_ASSET / "tokenizer.json.gz", "rt", encoding="utf-8") as f:
        return json.load(f)


def write_slow_tokenizer(out: Path, legacy: bool) -> Path:
    """A folder LLaVA's ``AutoTokenizer(use_fast=False)`` loads: ``tokenizer.model`` + Llama 2's config."""
    out.mkdir(parents=True, exist_ok=True)
    write_sentencepiece_model(read_vendored_tokenizer_json(), out / "tokenizer.model")
    config = json.loads((LLAMA_TOKENIZER_ASSET / "tokenizer_config.json").read_text())
    config["legacy"] = legacy
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def run_original(site: Path, job: dict, work: Path, timeout: float = 600) -> dict:
    """Run ``llava_side_runner.py`` on ``job`` in the side folder; its result dict (tensors)."""
    import torch

    work.mkdir(parents=True, exist_ok=True)
    job = {**job, "out": str(work / "original.pt")}
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job, indent=2))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    proc = subprocess.run(
        [sys.executable, str(SIDE_RUNNER), str(job_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=work,
    )
    if proc.returncode != 0:
        raise SideEnvError(
            f"the original LLaVA package failed in the side folder {site}:\n{proc.stderr[-4000:]}"
        )
    return torch.load(job["out"], weights_only=True) | {"log": proc.stdout}
