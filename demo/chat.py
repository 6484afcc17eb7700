"""Chat: one question to the LLaVA built on each tower, answers streamed side by side.

:class:`~llava_integration.inference.LlavaRunner` answers in one piece, so streaming is done
here: the prompt is built by the runner's own encoder (the training template, image tokens
expanded) and ``generate`` gets a streamer that forwards each new piece of text. Both models
generate at once in worker threads; the page is updated whenever either has something new.
A runner without those encoding hooks is still answered, in one piece.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from demo.images import open_image
from demo.models import SIDES, ModelRegistry
from genhancer.runtime.errors import UserError, first_line

_DONE, _PIECE, _ERROR = "done", "piece", "error"


def _inputs(runner, image, question: str) -> dict:
    """``generate`` keyword arguments for one (image, question), as ``LlavaRunner.generate`` builds them."""
    import torch

    ids = runner.encode(image, question)[0]
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


def stream_answer(runner, image, question: str, max_new_tokens: int = 48) -> Iterator[str]:
    """Yield the answer so far after each token (greedy, like ``LlavaRunner.generate``)."""
    if not (hasattr(runner, "encode") and hasattr(runner, "preprocess") and hasattr(runner, "model")):
        yield runner.generate([image], question, max_new_tokens=max_new_tokens)[0]
        return
    pieces: queue.Queue = queue.Queue()

    def work():
        try:
            import torch

            with torch.no_grad():
                runner.model.generate(
                    **_inputs(runner, image, question),
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


def chat_turn(registry: ModelRegistry, image, question: str | None) -> Iterator[tuple[str, str]]:
    """What the chat button streams: ``(original answer, enhanced answer)`` so far, repeatedly.

    A side that cannot answer (no model given, load failure) shows why, in place of its answer.
    """
    cfg = registry.cfg
    question = (question or "").strip()
    if not question:
        yield ("⚠ write a question first",) * 2
        return
    try:
        img = (
            None
            if image is None
            else open_image(image, "image", cfg.max_image_pixels, int(cfg.max_upload_mb * 1e6))
        )
    except UserError as exc:
        yield (f"⚠ {exc}",) * 2
        return
    answers = {s: "" for s in SIDES}
    updates: queue.Queue = queue.Queue()
    running = 0
    for side in SIDES:
        try:
            runner = registry.llava(side)
        except UserError as exc:
            answers[side] = f"⚠ {exc}"
            continue
        running += 1

        def work(side=side, runner=runner):
            try:
                for text in stream_answer(runner, img, question, cfg.max_new_tokens):
                    updates.put((side, text, False))
                updates.put((side, None, True))
            except UserError as exc:
                updates.put((side, f"⚠ {exc}", True))

        threading.Thread(target=work, daemon=True).start()
    yield answers["original"], answers["enhanced"]
    while running:
        side, text, finished = updates.get()
        if text is not None:
            answers[side] = text
        if finished:
            running -= 1
            if not answers[side]:
                answers[side] = "(empty answer)"
        yield answers["original"], answers["enhanced"]
