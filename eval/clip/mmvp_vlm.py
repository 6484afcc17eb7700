"""MMVP-VLM (Tong et al., "Eyes Wide Shut?"), scored with the official protocol.

Data, as published: ``Questions.csv`` with columns ``Question ID, Type, Statement`` (rows in
pairs: an odd id and the next even id), images ``MLLM_VLM Images/<Type>/<Question ID>.jpg``.
Each statement describes its own image (statement ``k`` <-> ``k.jpg``).

Protocol (official evaluation script; GenHancer Table 1):

* text prompt ``"a photo of " + statement``;
* for each pair and each of its two statements, a softmax over the pair's two images of the
  model's own logits (SigLIP: its sigmoid-model logits, whose bias cancels in the softmax);
* a statement is right when its own image gets the higher probability; a pair is right only
  when both statements are right;
* pattern = pair index // 15 (15 pairs per pattern), 9 patterns; report each pattern's pair
  accuracy and their average, in percent with one decimal.

Ties: a statement whose two probabilities are exactly equal is *not* right. (The official
script predicts "second image" on a tie, which makes a tie right for the pair's second
statement only; we count neither, so a constant model scores 0, not an artefact of row order.)

The scoring (:func:`score_pairs`) is a pure function of similarity numbers, kept apart from
loading (:func:`load_mmvp_vlm`, :func:`download_mmvp_vlm`) and from the model
(:func:`pair_similarities`).
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from genhancer.runtime.errors import UserError

CSV_NAME = "Questions.csv"
IMAGE_DIR = "MLLM_VLM Images"
CSV_COLUMNS = ("Question ID", "Type", "Statement")
PROMPT_PREFIX = "a photo of "
PAIRS_PER_PATTERN = 15
HF_DATASET_ID = "MMVP/MMVP_VLM"

#: The nine ``Type`` values of the published data, in the order of the paper's Table 1 columns,
#: with the short metric keys we record.
PATTERNS: tuple[tuple[str, str], ...] = (
    ("orientation", "Orientation and Direction"),
    ("presence", "Presence of Specific Features"),
    ("state", "State and Condition"),
    ("quantity", "Quantity and Count"),
    ("position", "Positional and Relational Context"),
    ("color", "Color and Appearance"),
    ("structure", "Structural Characteristics"),
    ("text", "Texts"),
    ("viewpoint", "Viewpoint and Perspective"),
)
PATTERN_KEYS: tuple[str, ...] = tuple(k for k, _ in PATTERNS)
_KEY_OF_TYPE = {t.lower(): k for k, t in PATTERNS}
#: Table 1 column titles (the paper says "Structural and Physical Characteristics").
PATTERN_TITLES = {k: t for k, t in PATTERNS} | {"structure": "Structural and Physical Characteristics"}


def pattern_key(type_name: str) -> str:
    """Short key for a published ``Type`` (unknown types keep their own name)."""
    return _KEY_OF_TYPE.get(type_name.strip().lower(), type_name.strip())


# --- pure scoring -------------------------------------------------------------------------------


def statement_correct(sims: Sequence[Sequence[float]]) -> tuple[bool, bool]:
    """Which of a pair's two statements pick their own image.

    ``sims[s][i]`` is the logit of statement ``s`` with image ``i`` (statement 0 describes
    image 0). Per statement, a softmax over the two images; right = strictly higher probability
    for its own image (a tie is not right).
    """
    out = []
    for s in (0, 1):
        a, b = float(sims[s][0]), float(sims[s][1])
        m = max(a, b)
        ea, eb = math.exp(a - m), math.exp(b - m)
        p_own, p_other = (ea, eb) if s == 0 else (eb, ea)
        out.append(p_own / (ea + eb) > p_other / (ea + eb))
    return out[0], out[1]


@dataclass
class MMVPScore:
    """Per-pattern pair accuracy (percent, one decimal), their average, and per-pair detail."""

    per_pattern: dict[str, float]
    average: float
    pair_correct: list[bool] = field(default_factory=list)
    statement_correct: list[tuple[bool, bool]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {**self.per_pattern, "average": self.average}


def score_pairs(sims: Sequence[Sequence[Sequence[float]]], patterns: Sequence[str]) -> MMVPScore:
    """Score pairs from their 2x2 similarity matrices (see :func:`statement_correct`).

    ``patterns[p]`` names pair ``p``'s pattern; patterns are reported in order of first
    appearance. Pattern accuracy = right pairs / pairs of that pattern; the average is the mean
    of the pattern accuracies (as the paper), rounded after averaging.
    """
    if len(sims) != len(patterns):
        raise ValueError(f"{len(sims)} similarity matrices for {len(patterns)} pattern labels")
    per_statement = [statement_correct(s) for s in sims]
    right = [a and b for a, b in per_statement]
    order = list(dict.fromkeys(patterns))
    raw = {}
    for name in order:
        idx = [i for i, p in enumerate(patterns) if p == name]
        raw[name] = 100.0 * sum(right[i] for i in idx) / len(idx)
    average = sum(raw.values()) / len(raw) if raw else 0.0
    return MMVPScore(
        per_pattern={k: round(v, 1) for k, v in raw.items()},
        average=round(average, 1),
        pair_correct=right,
        statement_correct=per_statement,
    )


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MMVPItem:
    question_id: int
    type: str
    statement: str
    image: Path


@dataclass(frozen=True)
class MMVPPair:
    index: int
    pattern: str  # short key (see PATTERNS)
    first: MMVPItem
    second: MMVPItem


@dataclass
class MMVPData:
    """A loaded benchmark: its pairs, where it came from, and which answer key (hash of the CSV)."""

    root: Path
    pairs: list[MMVPPair]
    revision: str
    source: str


def load_mmvp_vlm(
    root: str | Path, pairs_per_pattern: int = PAIRS_PER_PATTERN, source: str = "", revision: str = ""
) -> MMVPData:
    """Read and validate the published layout under ``root``; every error names the file.

    ``revision`` defaults to ``sha256:<12 hex>`` of ``Questions.csv`` (the answer key).
    """
    root = Path(root)
    csv_path = root / CSV_NAME
    if not csv_path.is_file():
        raise UserError(
            f"MMVP-VLM data: {csv_path} not found (expected the published layout: "
            f"{CSV_NAME} and '{IMAGE_DIR}/<Type>/<Question ID>.jpg')"
        )
    raw = csv_path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{csv_path} is not UTF-8 text") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    if tuple(header) != CSV_COLUMNS:
        raise UserError(f"{csv_path}: columns are {header}, expected {list(CSV_COLUMNS)}")
    items = []
    for line, row in enumerate(reader, start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != 3:
            raise UserError(f"{csv_path} line {line}: expected 3 fields, got {len(row)}")
        qid_text, qtype, statement = (c.strip() for c in row)
        try:
            qid = int(qid_text)
        except ValueError:
            raise UserError(f"{csv_path} line {line}: Question ID '{qid_text}' is not an integer") from None
        image = root / IMAGE_DIR / qtype / f"{qid}.jpg"
        if not image.is_file():
            raise UserError(f"MMVP-VLM image missing: {image} (named by {csv_path} line {line})")
        items.append(MMVPItem(qid, qtype, statement, image))
    if not items:
        raise UserError(f"{csv_path} has no questions")
    if len(items) % 2:
        raise UserError(f"{csv_path}: {len(items)} questions, expected pairs (an even number)")
    pairs = []
    for p in range(len(items) // 2):
        a, b = items[2 * p], items[2 * p + 1]
        if a.question_id % 2 != 1 or b.question_id != a.question_id + 1:
            raise UserError(
                f"{csv_path}: pair {p} has Question IDs {a.question_id}, {b.question_id}; "
                "expected an odd id followed by the next even id"
            )
        block = p // pairs_per_pattern
        pattern = pattern_key(items[2 * block * pairs_per_pattern].type)
        pairs.append(MMVPPair(p, pattern, a, b))
    rev = revision or "sha256:" + hashlib.sha256(raw).hexdigest()[:12]
    return MMVPData(root, pairs, rev, source or str(root))


def download_mmvp_vlm(
    dataset_id: str = HF_DATASET_ID, revision: str = "", cache_dir: str | None = None
) -> Path:
    """Fetch the published files from the Hugging Face hub (a dataset repo in the same layout)."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id=dataset_id, repo_type="dataset", revision=revision or None, cache_dir=cache_dir
        )
    except Exception as exc:  # hub errors have many types; all mean "not available here"
        raise UserError(
            f"cannot download MMVP-VLM '{dataset_id}' from the Hugging Face hub: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''} -- put a local copy under "
            "DATA_ROOT/mmvp_vlm/ and pass --data-root"
        ) from None
    return Path(path)


def resolve_mmvp_vlm(
    source: str, pairs_per_pattern: int = PAIRS_PER_PATTERN, revision: str = "", cache_dir: str | None = None
) -> MMVPData:
    """``source``: a local folder, or an HF dataset id (``MMVP/MMVP_VLM``) when no such folder exists."""
    path = Path(source).expanduser()
    if path.exists() or source.startswith(("/", ".", "~")) or source.count("/") != 1:
        return load_mmvp_vlm(path, pairs_per_pattern)
    local = download_mmvp_vlm(source, revision, cache_dir)
    commit = local.name  # snapshots/<commit>
    return load_mmvp_vlm(local, pairs_per_pattern, source=source, revision=commit)


# --- model --------------------------------------------------------------------------------------


def pair_similarities(
    encoder, data: MMVPData, limit: int | None = None, prompt_prefix: str = PROMPT_PREFIX
) -> list[list[list[float]]]:
    """``[pair][statement][image]`` logits of ``encoder`` (a :class:`~eval.clip.encoders.DualEncoder`).

    ``prompt_prefix`` is the official ``"a photo of "``; only the toy preset changes it (its
    tiny tower never saw that phrase in training).
    """
    from PIL import Image

    pairs = data.pairs[:limit] if limit else data.pairs
    items = [it for p in pairs for it in (p.first, p.second)]
    images = []
    for it in items:
        with Image.open(it.image) as im:
            images.append(im.convert("RGB"))
    img = encoder.encode_images(images, desc="mmvp_vlm images")
    txt = encoder.encode_texts([prompt_prefix + it.statement for it in items])
    out = []
    for p in range(len(pairs)):
        rows = slice(2 * p, 2 * p + 2)
        logits = encoder.logits(img[rows], txt[rows])  # [image, statement]
        out.append(logits.T.tolist())  # [statement, image]
    return out


def evaluate(
    encoder, data: MMVPData, limit: int | None = None, prompt_prefix: str = PROMPT_PREFIX
) -> MMVPScore:
    """Score ``encoder`` on ``data`` (the first ``limit`` pairs when given)."""
    sims = pair_similarities(encoder, data, limit, prompt_prefix)
    return score_pairs(sims, [p.pattern for p in data.pairs[: len(sims)]])
