"""The pair test: two images, one or two statements, both encoders scored side by side.

This is MMVP-VLM's question made interactive: for each statement, a softmax of the model's own
logits over the two images says which image the model thinks the statement describes. When the
user marks which image a statement is true of, the pick turns green (right) or red (wrong).
Ties count as wrong, as in :mod:`eval.clip.mmvp_vlm`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from demo.images import open_image
from demo.models import SIDES, TITLES, ModelRegistry
from genhancer.runtime.errors import UserError

#: Choices of the "statement N is true of" control.
TRUTH_CHOICES: tuple[str, ...] = ("not marked", "image A", "image B")
IMAGE_NAMES = ("A", "B")


@dataclass
class StatementScore:
    """One statement against the two images, for one model.

    Attributes:
        logits: the model's own logits with image A and image B.
        cosine: cosine similarity with A and B.
        probs: softmax of ``logits`` over the two images.
        pick: 0 (A), 1 (B) or -1 (a tie).
        truth: the image the user marked (0, 1) or None.
    """

    statement: str
    logits: tuple[float, float]
    cosine: tuple[float, float]
    probs: tuple[float, float]
    pick: int
    truth: int | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.truth is None else self.pick == self.truth


@dataclass
class ModelScores:
    side: str
    spec: str
    statements: list[StatementScore] = field(default_factory=list)
    error: str = ""


@dataclass
class PairResult:
    models: list[ModelScores] = field(default_factory=list)
    message: str = ""


def parse_truth(choice: str | None) -> int | None:
    """``"image A"`` -> 0, ``"image B"`` -> 1, anything else -> None."""
    if choice in ("image A", "A"):
        return 0
    if choice in ("image B", "B"):
        return 1
    return None


def softmax2(a: float, b: float) -> tuple[float, float]:
    m = max(a, b)
    ea, eb = math.exp(a - m), math.exp(b - m)
    return ea / (ea + eb), eb / (ea + eb)


def score_statements(
    encoder, images: Sequence, statements: Sequence[str], prefix: str
) -> list[StatementScore]:
    """Score ``statements`` against the two ``images`` with one dual encoder."""
    import torch

    img = encoder.encode_images(list(images))
    txt = encoder.encode_texts([prefix + s for s in statements])
    logits = encoder.logits(img, txt).T  # [statement, image]
    cos = (
        torch.nn.functional.normalize(txt.double(), dim=-1)
        @ torch.nn.functional.normalize(img.double(), dim=-1).T
    )
    out = []
    for s, text in enumerate(statements):
        a, b = float(logits[s, 0]), float(logits[s, 1])
        probs = softmax2(a, b)
        pick = 0 if probs[0] > probs[1] else 1 if probs[1] > probs[0] else -1
        out.append(StatementScore(text, (a, b), (float(cos[s, 0]), float(cos[s, 1])), probs, pick))
    return out


def score_pair(
    registry: ModelRegistry,
    image_a,
    image_b,
    statements: Sequence[str | None],
    truths: Sequence[str | None] = (),
) -> PairResult:
    """What the pair-test button computes; never raises for user errors (they become ``message``)."""
    cfg = registry.cfg
    limit = int(cfg.max_upload_mb * 1e6)
    try:
        images = [
            open_image(image_a, "image A", cfg.max_image_pixels, limit),
            open_image(image_b, "image B", cfg.max_image_pixels, limit),
        ]
    except UserError as exc:
        return PairResult(message=str(exc))
    given = [
        ((s or "").strip(), parse_truth(t)) for s, t in zip(statements, [*truths, *[None] * len(statements)])
    ]
    given = [(s, t) for s, t in given if s]
    if not given:
        return PairResult(message="write at least one statement (e.g. 'the arrow points left')")
    result = PairResult()
    for side in SIDES:
        scores = ModelScores(side, registry.encoder_spec(side))
        try:
            encoder = registry.encoder(side)
            scores.statements = score_statements(encoder, images, [s for s, _ in given], cfg.prompt_prefix)
            for st, (_, truth) in zip(scores.statements, given):
                st.truth = truth
        except UserError as exc:
            scores.error = str(exc)
        result.models.append(scores)
    return result


# --- rendering ---------------------------------------------------------------------------------

_GREEN, _RED, _GREY = "#d3f4dc", "#fbd9d7", "#eef0f3"


def message_html(text: str, kind: str = "warn") -> str:
    """A boxed note in the page (used for every 'cannot do this' case instead of a traceback)."""
    colour = {"warn": "#fff4d6", "error": "#fbd9d7", "info": "#e8f1fd"}[kind]
    return (
        f'<div class="gh-message gh-{kind}" style="background:{colour};padding:10px 14px;'
        f'border-radius:8px;color:#222">{html.escape(text)}</div>'
    )


def _statement_rows(st: StatementScore, n: int) -> str:
    if st.correct is None:
        colour, verdict, cls = _GREY, "", "gh-unmarked"
    elif st.correct:
        colour, verdict, cls = _GREEN, " ✓ right", "gh-right"
    else:
        colour, verdict, cls = _RED, " ✗ wrong", "gh-wrong"
    pick = "tie" if st.pick < 0 else f"image {IMAGE_NAMES[st.pick]}"
    cells = "".join(
        f"<td>{st.logits[i]:.2f}<br><small>cos {st.cosine[i]:.3f}</small></td><td><b>{100 * st.probs[i]:.1f}%</b></td>"
        for i in (0, 1)
    )
    return (
        f'<tr class="gh-statement {cls}" style="background:{colour}">'
        f"<td>{n}. {html.escape(st.statement)}</td>{cells}"
        f'<td class="gh-pick"><b>{pick}</b>{verdict}</td></tr>'
    )


def render_pair(result: PairResult) -> str:
    """The result as HTML: one table per model, side by side."""
    if result.message:
        return message_html(result.message)
    blocks = []
    for m in result.models:
        head = (
            f'<h3 style="margin:4px 0">{TITLES[m.side]}</h3>'
            f'<div style="font-size:0.8em;color:#666;word-break:break-all">{html.escape(m.spec)}</div>'
        )
        if m.error:
            body = message_html(m.error, "error")
        else:
            marked = [s.correct for s in m.statements if s.correct is not None]
            summary = ""
            if len(marked) == 2:
                both = all(marked)
                summary = (
                    f'<p class="gh-pair-verdict">pair {"right" if both else "wrong"} '
                    f"(MMVP-VLM counts a pair only when both statements are right)</p>"
                )
            rows = "".join(_statement_rows(s, i + 1) for i, s in enumerate(m.statements))
            body = (
                '<table class="gh-scores" style="width:100%;border-collapse:collapse;text-align:left">'
                "<tr><th>statement</th><th>logit A</th><th>P(A)</th><th>logit B</th><th>P(B)</th>"
                f"<th>picks</th></tr>{rows}</table>{summary}"
            )
        blocks.append(
            f'<div class="gh-model" data-side="{m.side}" style="flex:1;min-width:280px;padding:8px;'
            f'border:1px solid #ddd;border-radius:8px">{head}{body}</div>'
        )
    return f'<div class="gh-pair" style="display:flex;gap:12px;flex-wrap:wrap">{"".join(blocks)}</div>'
