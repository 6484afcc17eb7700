"""LLaVA JSON data: validation, encoding with the label mask, length-grouped batches, exact resume.

A sample is ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}...]}`` with
``<image>`` in a human turn, and images under an image root (LCS-558K and llava_v1_5_mix665k as
published). The stream yields whole micro-batches; which samples form micro-batch ``g`` is a pure
function of ``(seed, g)``, so resuming needs only the stored sample position (no replay of history).
Rows LLaVA-1.5 tolerates are repaired and counted, broken rows are skipped and counted by reason
(:class:`RowReport`); unreadable images drop their sample (counted); too-long samples are
truncated (counted), or dropped when truncation would cut the image or leave no answer token.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genhancer.runtime.errors import UserError
from genhancer.runtime.seeding import derive_seed
from llava_integration.templates import IGNORE_INDEX, IMAGE_TOKEN, Template, Turn, tokenize

ROLES = ("human", "gpt")
log = logging.getLogger("llava_integration")


@dataclass(frozen=True)
class Record:
    """One validated JSON sample; ``length`` is a cheap size estimate used for grouping."""

    id: str
    image: str | None
    turns: tuple[Turn, ...]
    length: int


class RowSkipped(Exception):
    """A JSON row that cannot be trained on; ``reason`` is the counter it is filed under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class RowReport:
    """What reading a LLaVA JSON file kept, tolerated and skipped, by reason.

    ``tolerated`` counts rows kept after a repair LLaVA-1.5 makes too (a leading ``gpt`` turn is
    dropped, as its ``preprocess_v1`` does); ``skipped`` counts rows left out; ``examples`` keeps the
    first few row ids per reason, for the log.
    """

    rows: int = 0
    kept: int = 0
    tolerated: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: dict[str, int], reason: str, sid: str) -> None:
        kind[reason] = kind.get(reason, 0) + 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 3:
            ids.append(sid)

    def as_dict(self) -> dict:
        """The counters as ``metrics.jsonl`` records them (``examples`` stay in the log)."""
        return {
            "rows": self.rows,
            "kept": self.kept,
            "tolerated": dict(sorted(self.tolerated.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }

    def summary(self) -> str:
        parts = [f"{self.kept} of {self.rows} rows kept"]
        for title, kind in (("tolerated", self.tolerated), ("skipped", self.skipped)):
            for reason, n in sorted(kind.items()):
                parts.append(f"{n} {title} ({reason}, e.g. {', '.join(self.examples[reason])})")
        return "; ".join(parts)


def _safe_relpath(image: str, sample_id: str, source: str) -> str:
    """Image paths stay inside the image root: absolute paths and ``..`` escapes are refused."""
    norm = os.path.normpath(image)
    if os.path.isabs(image) or norm == ".." or norm.startswith(".." + os.sep) or norm.startswith("/"):
        raise RowSkipped(
            "image_path_outside_root",
            f"{source}: sample '{sample_id}' has image path '{image}' outside the image folder",
        )
    return norm


def parse_row(s: object, i: int, source: str, image_tokens: int = 0) -> tuple[Record, list[str]]:
    """One JSON row as ``(Record, repairs made)``, or :class:`RowSkipped` naming why it cannot be used.

    Tolerated like LLaVA-1.5: a conversation that opens with a ``gpt`` turn loses that turn; one
    that ends on a ``human`` turn loses it (nothing answers it); an image row without ``<image>``
    gets it at the front of the first turn."""
    if not isinstance(s, dict):
        raise RowSkipped("not_an_object", f"{source}: sample #{i} is not a JSON object")
    sid = str(s.get("id", f"#{i}"))
    conv = s.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RowSkipped("no_conversations", f"{source}: sample '{sid}' has no 'conversations' list")
    for j, t in enumerate(conv):
        if not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str):
            raise RowSkipped(
                "bad_turn", f"{source}: sample '{sid}' turn {j} needs 'from' (human|gpt) and a string 'value'"
            )
    repairs = []
    if conv[0]["from"] == "gpt":
        conv = conv[1:]
        repairs.append("leading_gpt_turn_dropped")
    if conv and conv[-1]["from"] == "human":
        conv = conv[:-1]
        repairs.append("trailing_human_turn_dropped")
    if not conv:
        raise RowSkipped("no_answer", f"{source}: sample '{sid}' has no answered human turn")
    turns = []
    for j, t in enumerate(conv):
        if t["from"] != ROLES[j % 2]:
            raise RowSkipped(
                "roles_out_of_order", f"{source}: sample '{sid}' turns do not alternate human, gpt"
            )
        turns.append(Turn(t["from"], t["value"]))
    n_tokens = sum(t.text.count(IMAGE_TOKEN) for t in turns)
    image = s.get("image")
    if image is not None and not isinstance(image, str):
        raise RowSkipped(
            "image_not_a_string", f"{source}: sample '{sid}' has a non-string 'image' (one image per sample)"
        )
    if n_tokens and not image:
        raise RowSkipped(
            "image_token_without_image", f"{source}: sample '{sid}' has an {IMAGE_TOKEN} token but no 'image'"
        )
    if n_tokens > 1 or any(IMAGE_TOKEN in t.text for t in turns if t.role == "gpt"):
        raise RowSkipped(
            "several_image_tokens",
            f"{source}: sample '{sid}' needs exactly one {IMAGE_TOKEN}, in a human turn",
        )
    if image:
        image = _safe_relpath(image, sid, source)
        if not n_tokens:
            turns[0] = Turn("human", f"{IMAGE_TOKEN}\n{turns[0].text}")  # LLaVA places it first
            repairs.append("image_token_added")
    words = sum(len(t.text.split()) for t in turns)
    return Record(sid, image or None, tuple(turns), words + (image_tokens if image else 0)), repairs


def parse_records(
    samples: list, source: str, image_tokens: int = 0, report: RowReport | None = None
) -> list[Record]:
    """Validate raw JSON rows: broken ones are skipped and counted in ``report`` by reason (one bad
    row in 665K must not stop a run); only a file with no usable row is an error."""
    if not isinstance(samples, list):
        raise UserError(f"{source}: expected a JSON list of samples")
    report = report if report is not None else RowReport()
    out = []
    for i, s in enumerate(samples):
        report.rows += 1
        try:
            record, repairs = parse_row(s, i, source, image_tokens)
        except RowSkipped as exc:
            sid = str(s.get("id", f"#{i}")) if isinstance(s, dict) else f"#{i}"
            report.note(report.skipped, exc.reason, sid)
            if report.skipped[exc.reason] == 1:  # once per reason; train.run logs the totals
                log.warning("skipping a row: %s", exc)
            continue
        for reason in repairs:
            report.note(report.tolerated, reason, record.id)
        out.append(record)
    report.kept = len(out)
    if samples and not out:
        raise UserError(f"{source}: no usable sample ({report.summary()})")
    return out


def load_records(path: str | Path, image_tokens: int = 0, report: RowReport | None = None) -> list[Record]:
    """The usable rows of a LLaVA JSON file; ``report`` (when given) receives the counts."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    try:
        samples = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    records = parse_records(samples, str(path), image_tokens, report)
    if not records:
        raise UserError(f"{path} holds no samples")
    return records


# --- encoding -----------------------------------------------------------------------------------


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode(
    record: Record,
    tokenizer,
    template: Template,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int,
) -> Encoded | None:
    """Token ids with ``<image>`` expanded to the tower's patch count, and labels.

    Returns None when the sample cannot be trained on after truncation (image cut, or no answer
    token left), which the caller counts.
    """
    ids, labels = tokenize(tokenizer, template, record.turns)
    if record.image is not None:
        pos = ids.index(image_token_id)
        ids = ids[:pos] + [image_token_id] * num_image_tokens + ids[pos + 1 :]
        labels = labels[:pos] + [IGNORE_INDEX] * num_image_tokens + labels[pos + 1 :]
        image_end = pos + num_image_tokens
    else:
        image_end = 0
    truncated = len(ids) > max_length
    if truncated:
        if image_end > max_length:
            return None
        ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE_INDEX for x in labels):
        return None
    return Encoded(ids, labels, truncated)


# --- ordering -----------------------------------------------------------------------------------


def epoch_order(records: list[Record], seed: int, epoch: int, group: int, by_modality: bool) -> list[int]:
    """A permutation of the dataset for one epoch.

    With ``by_modality`` (LLaVA's ``group_by_modality_length``), image and text-only samples are
    shuffled separately and cut into groups of ``group`` samples (one micro-batch per process),
    sorted by length inside a group so padding stays small; the groups are shuffled together and
    the two leftover partial groups go last.
    """
    rng = random.Random(derive_seed("llava-order", seed, epoch))
    if not by_modality:
        order = list(range(len(records)))
        rng.shuffle(order)
        return order
    groups, tail = [], []
    for want_image in (True, False):
        idx = [i for i, r in enumerate(records) if (r.image is not None) == want_image]
        rng.shuffle(idx)
        full = len(idx) - len(idx) % group
        for s in range(0, full, group):
            groups.append(sorted(idx[s : s + group], key=lambda i: -records[i].length))
        tail += idx[full:]
    rng.shuffle(groups)
    return [i for g in groups for i in g] + tail


class SampleOrder:
    """Sample ``k`` of the endless stream (epoch after epoch), cached one epoch at a time."""

    def __init__(self, records: list[Record], seed: int, group: int, by_modality: bool):
        self.records, self.seed, self.group, self.by_modality = records, seed, group, by_modality
        self._epoch, self._order = -1, []

    def __getitem__(self, k: int) -> int:
        epoch, i = divmod(k, len(self.records))
        if epoch != self._epoch:
            self._order = epoch_order(self.records, self.seed, epoch, self.group, self.by_modality)
            self._epoch = epoch
        return self._order[i]


# --- the stream ---------------------------------------------------------------------------------


class LlavaStream(torch.utils.data.IterableDataset):
    """Collated micro-batches for one rank, starting at sample position ``start``.

    Global micro-batch ``g`` holds stream samples ``[g*B, (g+1)*B)``; rank ``r`` of ``W`` takes
    ``g = m*W + r``, and its position counts the samples it has consumed (``m*B``). DataLoader
    workers take every ``num_workers``-th micro-batch, which the loader interleaves back in order.
    """

    def __init__(
        self,
        records: list[Record],
        image_root: str | Path,
        tokenizer,
        image_processor,
        template: Template,
        image_token_id: int,
        num_image_tokens: int,
        max_length: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        group_by_modality: bool = True,
    ):
        super().__init__()
        if start % batch_size:
            raise ValueError(f"start position {start} is not a multiple of the batch size {batch_size}")
        self.records, self.image_root = records, Path(image_root)
        self.tokenizer, self.image_processor, self.template = tokenizer, image_processor, template
        self.image_token_id, self.num_image_tokens = image_token_id, num_image_tokens
        self.max_length, self.batch_size, self.seed = max_length, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.group_by_modality = group_by_modality

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = SampleOrder(
            self.records, self.seed, self.batch_size * self.world_size, self.group_by_modality
        )
        m = self.start // self.batch_size + wid
        while True:
            g = m * self.world_size + self.rank
            idx = [order[k] for k in range(g * self.batch_size, (g + 1) * self.batch_size)]
            batch = self.collate([self.records[i] for i in idx])
            batch["position"] = (m + 1) * self.batch_size
            yield batch
            m += nw

    def load_image(self, record: Record):
        from PIL import Image

        path = self.image_root / record.image
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            return None

    def collate(self, records: list[Record]) -> dict:
        """Encode, load images, pad right; counts ``skipped`` images and ``truncated``/``dropped`` samples."""
        encoded, images, skipped, truncated, dropped = [], [], 0, 0, 0
        for r in records:
            image = None
            if r.image is not None:
                image = self.load_image(r)
                if image is None:
                    skipped += 1
                    continue
            enc = encode(
                r, self.tokenizer, self.template, self.image_token_id, self.num_image_tokens, self.max_length
            )
            if enc is None:
                dropped += 1
                continue
            truncated += enc.truncated
            encoded.append(enc)
            if image is not None:
                images.append(image)
        return pad_batch(
            encoded,
            images,
            self.image_processor,
            self.tokenizer.pad_token_id,
            skipped=skipped,
            truncated=truncated,
            dropped=dropped,
        )


def pad_batch(encoded: list[Encoded], images: list, image_processor, pad_id: int, **counts: int) -> dict:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` and the images' ``pixel_values``."""
    n = len(encoded)
    width = max((len(e.input_ids) for e in encoded), default=0)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, e in enumerate(encoded):
        input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    if images:
        pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    else:
        pixel_values = torch.zeros((0, 3, 1, 1))
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": pixel_values,
        "num_samples": n,
        **counts,
    }
