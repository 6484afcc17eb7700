"""Chat: a conversation with the LLaVA built on each tower, answers streamed side by side.

Each side keeps its own history (its model's own earlier answers), rendered in LLaVA's
``vicuna_v1`` conversation template with the image in the first user turn, as LLaVA-1.5's own
multi-turn demo does: :func:`encode_conversation` builds the prompt with the training code's
tokenizer (:func:`llava_integration.templates.tokenize`), image tokens expanded, so a first turn
is exactly :meth:`~llava_integration.inference.LlavaRunner.encode`'s prompt. ``generate`` gets a
streamer that forwards each new piece of text; both models generate at once in worker threads and
the page is updated whenever either has something new. A runner without those encoding hooks is
still answered (the last question alone, in one piece).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

from demo.common import SIDES
from demo.images import open_image
from demo.models import ModelRegistry
from genhancer.runtime.errors import UserError, first_line
from llava_integration.templates import IMAGE_TOKEN, Turn, tokenize

_DONE, _PIECE, _ERROR = "done", "piece", "error"
#: A side's conversation so far: (question, answer) pairs, oldest first.
History = Sequence[tuple[str, str]]
#: What a failed or missing answer starts with in the page (never sent back to the model).
WARNING = "⚠"
#: Shown for an empty answer (kept out of the history, like a warning).
EMPTY = "(empty answer)"


def encode_conversation(runner, image, history: History, question: str) -> list[int]:
    """Prompt ids for ``question`` after ``history`` in the runner's template (``vicuna_v1``): the
    image (if any) opens the first user turn, each earlier answer closes its turn with the end
    token, and the prompt ends with the assistant's generation prompt."""

    turns: list = []
    for q, a in [*history, (question, None)]:
        text = f"{IMAGE_TOKEN}\n{q}" if image is not None and not turns else q
        turns.append(Turn("human", text))
        if a is not None:
            turns.append(Turn("gpt", a))
    ids, _ = tokenize(runner.tokenizer, runner.template, turns, include_end=True, add_generation_prompt=True)
    if image is not None:
        pos = ids.index(runner.image_token_id)
        ids = ids[:pos] + [runner.image_token_id] * runner.num_image_tokens + ids[pos + 1 :]
    return ids


def history_from_messages(messages) -> list[tuple[str, str]]:
    """(question, answer) pairs of a chat panel's messages (``{"role", "content"}`` dicts), without
    turns whose answer is a warning: the model never sees a failure as its own answer."""
    pairs, question = [], None
    for m in messages or []:
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (m.role, m.content)
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
        content = str(content or "")
        if role == "user":
            question = content
        elif role == "assistant" and question is not None:
            if not content.startswith(WARNING) and content != EMPTY:
                pairs.append((question, content))
            question = None
    return pairs


def _inputs(runner, image, question: str, history: History = ()) -> dict:
    """``generate`` keyword arguments for one (image, conversation), as ``LlavaRunner.generate`` builds them."""
    import torch

    ids = encode_conversation(runner, image, history, question)
    input_ids = torch.tensor([ids], dtype=torch.long, device=runner.device)
    extra = {}
    if image is not None:
        extra["pixel_values"] = runner.preprocess([image])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **extra}


def _streamer(tokenizer, emit):
    """A ``generate`` streamer that calls ``emit(text so far)`` after each new token."""
    from transformers.generation.streamers import BaseStreamer

    class _Forward(BaseStreamer):
        def __init__(self):
            self.ids: list[int] = []
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:  # generate's first call hands over the prompt
                self.prompt_seen = True
                return
            self.ids.extend(int(t) for t in value.reshape(-1).tolist())
            emit(tokenizer.decode(self.ids, skip_special_tokens=True).strip())

        def end(self):
            pass

    return _Forward()


def stream_answer(
    runner, image, question: str, max_new_tokens: int = 48, history: History = ()
) -> Iterator[str]:
    """Yield the answer so far after each token (greedy, like ``LlavaRunner.generate``), to
    ``question`` after the side's ``history``."""
    if not (hasattr(runner, "tokenizer") and hasattr(runner, "preprocess") and hasattr(runner, "model")):
        yield runner.generate([image], question, max_new_tokens=max_new_tokens)[0]
        return
    pieces: queue.Queue = queue.Queue()

    def work():
        try:
            import torch

            with torch.no_grad():
                runner.model.generate(
                    **_inputs(runner, image, question, history),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=runner.tokenizer.pad_token_id,
                    eos_token_id=runner.tokenizer.eos_token_id,
                    streamer=_streamer(runner.tokenizer, lambda text: pieces.put((_PIECE, text))),
                )
            pieces.put((_DONE, None))
        except Exception as exc:  # reported in the page, next to the other model's answer
            pieces.put((_ERROR, f"{type(exc).__name__}: {first_line(exc)}"))

    threading.Thread(target=work, daemon=True).start()
    while True:
        kind, text = pieces.get()
        if kind == _PIECE:
            yield text
        elif kind == _ERROR:
            raise UserError(f"generation failed: {text}")
        else:
            return


def chat_turn(
    registry: ModelRegistry, image, question: str | None, histories: dict[str, History] | None = None
) -> Iterator[tuple[str, str]]:
    """What the chat button streams: ``(original answer, enhanced answer)`` so far, repeatedly,
    each side answering after its own ``histories[side]`` (none: a first turn).

    A side that cannot answer (no model given, load failure) shows why, in place of its answer.
    """
    cfg = registry.cfg
    histories = histories or {}
    question = (question or "").strip()
    if not question:
        yield (f"{WARNING} write a question first",) * 2
        return
    try:
        img = (
            None
            if image is None
            else open_image(image, "image", cfg.max_image_pixels, int(cfg.max_upload_mb * 1e6))
        )
    except UserError as exc:
        yield (f"{WARNING} {exc}",) * 2
        return
    answers = {s: "" for s in SIDES}
    updates: queue.Queue = queue.Queue()
    running = 0
    for side in SIDES:
        try:
            runner = registry.llava(side)
        except UserError as exc:
            answers[side] = f"{WARNING} {exc}"
            continue
        running += 1

        def work(side=side, runner=runner):
            try:
                for text in stream_answer(runner, img, question, cfg.max_new_tokens, histories.get(side, ())):
                    updates.put((side, text, False))
                updates.put((side, None, True))
            except UserError as exc:
                updates.put((side, f"{WARNING} {exc}", True))

        threading.Thread(target=work, daemon=True).start()
    yield answers["original"], answers["enhanced"]
    while running:
        side, text, finished = updates.get()
        if text is not None:
            answers[side] = text
        if finished:
            running -= 1
            if not answers[side]:
                answers[side] = EMPTY
        yield answers["original"], answers["enhanced"]


def chat_panels(
    registry: ModelRegistry, image, question: str | None, panels: dict[str, list]
) -> Iterator[dict[str, list]]:
    """The chat tab's multi-turn step: each side's panel messages (``{"role", "content"}``) with
    the new question and the answer so far appended, streamed; the history each side answers
    after comes from its own panel (:func:`history_from_messages`)."""
    question = (question or "").strip()
    before = {s: list(panels.get(s) or []) for s in SIDES}
    histories = {s: history_from_messages(before[s]) for s in SIDES}
    for answers in chat_turn(registry, image, question, histories):
        if not question:  # nothing to add to the conversation; say so in the last turn's place
            yield {s: [*before[s], {"role": "assistant", "content": a}] for s, a in zip(SIDES, answers)}
            continue
        yield {
            s: [*before[s], {"role": "user", "content": question}, {"role": "assistant", "content": a}]
            for s, a in zip(SIDES, answers)
        }
