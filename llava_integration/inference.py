"""Answer questions with a trained LLaVA: greedy generation and option likelihoods (for eval and demo).

Prompts use the ``vicuna_v1`` template the model was finetuned with, tokenized by the same code
as training (so the answer tokens scored by :meth:`LlavaRunner.choice_likelihood`, end token
included, are exactly the ones training supervised). Images go through the saved processor (pad to square, resize,
normalise), with ``<image>`` expanded to the tower's patch count.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from genhancer.runtime.errors import UserError
from llava_integration.model import num_image_tokens
from llava_integration.templates import IGNORE_INDEX, IMAGE_TOKEN, TEMPLATES, Template, Turn, tokenize


class LlavaRunner:
    """A loaded model + processor. Build with :meth:`load` (a saved dir) or from objects in memory."""

    def __init__(
        self, model, processor, template: str = "vicuna_v1", device: str | torch.device | None = None
    ):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template: Template = TEMPLATES[template]
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.num_image_tokens = num_image_tokens(model.config)
        self.image_token_id = model.config.image_token_id

    @classmethod
    def load(
        cls, model_dir: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> LlavaRunner:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise UserError(
                f"{model_dir} is not a saved LLaVA model (no config.json); use DIR/final of a run"
            )
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=dtype or torch.float32)
        # PIL backend: the saved config does not name one and transformers would pick torchvision,
        # whose resize differs from the PIL one LLaVA-1.5 (and our training) reads images with
        processor = AutoProcessor.from_pretrained(model_dir, backend="pil")
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, processor, device=dev)

    # --- encoding

    def encode(
        self, image, prompt: str, answer: str | None = None, include_end: bool = False
    ) -> tuple[list[int], list[int]]:
        """Ids and labels of a prompt (with the generation prompt) or of prompt + ``answer``, whose
        tokens (and end token with ``include_end``) carry labels exactly as training labels them."""
        text = f"{IMAGE_TOKEN}\n{prompt}" if image is not None else prompt
        turns = [Turn("human", text)]
        if answer is not None:
            turns.append(Turn("gpt", answer))
        ids, labels = tokenize(
            self.tokenizer,
            self.template,
            turns,
            include_end=include_end,
            add_generation_prompt=answer is None,
        )
        if image is not None:
            pos = ids.index(self.image_token_id)
            n = self.num_image_tokens
            ids = ids[:pos] + [self.image_token_id] * n + ids[pos + 1 :]
            labels = labels[:pos] + [IGNORE_INDEX] * n + labels[pos + 1 :]
        return ids, labels

    def preprocess(self, images: list):
        images = [im.convert("RGB") for im in images if im is not None]
        if not images:
            return None
        pv = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return pv.to(self.device, self.model.dtype)

    # --- public API

    @torch.no_grad()
    def generate(
        self, images: Sequence | object, prompt: str | Sequence[str], max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy answers, one per (image, prompt) pair; a single prompt is reused for every image.

        ``images`` may hold ``None`` for text-only prompts. Batched with left padding.
        """
        if not isinstance(images, list | tuple):
            images = [images]
        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        seqs = [self.encode(im, p)[0] for im, p in zip(images, prompts)]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, s in enumerate(seqs):
            input_ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        pixels = self.preprocess(list(images))
        extra = {"pixel_values": pixels} if pixels is not None else {}  # generate chokes on None
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            **extra,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]

    @torch.no_grad()
    def choice_likelihood(
        self,
        image,
        prompt: str,
        options: Sequence[str],
        with_end: bool = True,
        length_normalize: bool = False,
    ) -> list[float]:
        """Log-likelihood of each option as the whole answer: summed over its tokens and the end token.

        The end token makes an option that is a prefix of another ("red" vs "red car") pay for
        stopping there; without it (``with_end=False``) a sum of log-probabilities can only fall
        as an option grows, so the shorter option would win by construction.
        ``length_normalize`` averages over the scored tokens instead of summing.
        """
        if not options:
            return []
        rows = [self.encode(image, prompt, opt, include_end=with_end) for opt in options]
        width = max(len(ids) for ids, _ in rows)
        n = len(rows)
        input_ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        pixels = self.preprocess([image] * n) if image is not None else None
        logits = self.model(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), pixel_values=pixels
        ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:].to(self.device)
        picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        scored = target != IGNORE_INDEX
        total = (picked * scored).sum(-1)
        if length_normalize:
            total = total / scored.sum(-1).clamp_min(1)
        return total.tolist()
