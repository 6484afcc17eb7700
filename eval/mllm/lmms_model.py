"""``genhancer_llava``: our trained LLaVA directories as an lmms-eval model.

Usage from the lmms-eval CLI (after ``pip install -e .``, which registers the entry point)::

    lmms-eval --model genhancer_llava --model_args pretrained=runs/llava/final,batch_size=8 \\
              --tasks mmvp,pope_random --log_samples --output_path out/
    accelerate launch --num_processes 8 -m lmms_eval --model genhancer_llava ...   # one GPU each

It wraps :class:`llava_integration.inference.LlavaRunner` (``vicuna_v1`` prompt, greedy, batched)
and adds what the built-in ``llava_hf`` lacks: highest-likelihood answers for NaturalBench (the
paper's Table 2 protocol), per-sample response logging with resume, CPU runs of the tiny models.

Departures, by design: decoding is always greedy (``temperature``/``do_sample``/``top_p`` in a
task's generation kwargs are ignored, so runs are deterministic; lmms-eval's ``pope_*`` YAMLs set
``top_p: 0`` and CV-Bench sets nothing, leaving it to the model); only the first image of a
request is shown (LLaVA-1.5 is single-image; HallusionBench's ``NUM_IMAGE=2`` duplicates it);
``max_new_tokens`` is clipped to the language model's context (tiny models have 256 positions;
CV-Bench asks for 1024).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms

from eval.mllm.lmms_entry import CLASS_PATH, MODEL_NAME, manifest  # noqa: F401  (re-exported)
from genhancer.runtime.errors import UserError
from llava_integration.inference import LlavaRunner

CHOICE_MODES = ("generate", "likelihood")


def check_llava_dir(path: str | Path) -> Path:
    """``path`` if it holds a saved ``LlavaForConditionalGeneration``, else a UserError saying what it holds."""
    p = Path(path).expanduser()
    cfg = p / "config.json"
    if not cfg.is_file():
        hint = " (use RUN/final of an llava-train run)" if (p / "final" / "config.json").is_file() else ""
        raise UserError(f"'{path}' is not a LLaVA checkpoint: no config.json{hint}")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except ValueError:
        raise UserError(f"'{path}' is not a LLaVA checkpoint: config.json is not valid JSON") from None
    if model_type != "llava":
        raise UserError(f"'{path}' is not a LLaVA checkpoint: its config.json says model_type={model_type!r}")
    return p


def naturalbench_options(doc: dict) -> list[list[str]] | None:
    """Answer options of a NaturalBench row, each with its spellings (the tokenizer decides which is
    likelier; the best spelling stands for the option): yes/no or A/B. None for other rows."""
    kind = doc.get("Question_Type") if isinstance(doc, dict) else None
    if kind == "yes_no":
        return [["Yes", "yes"], ["No", "no"]]
    if kind == "multiple_choice":
        return [["A"], ["B"]]
    return None


def register() -> None:
    """Make ``genhancer_llava`` resolvable by ``simple_evaluate(model="genhancer_llava")`` in this process
    (the entry point does the same for installed copies; ``@register_model`` would not: lmms-eval
    0.7.3 resolves names only through ``MODEL_REGISTRY_V2``, ``models/__init__.py:272``)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)


class ResponseLog:
    """Append-only JSONL of finished responses, keyed by request; lets an interrupted run resume."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.done: dict[str, Any] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.done[row["key"]] = row["response"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by the interruption

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def add(self, rows: list[tuple[str, dict, Any]]) -> None:
        for key, _, response in rows:
            self.done[key] = response
        if self.path is None or not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for key, meta, response in rows:
                f.write(json.dumps({"key": key, **meta, "response": response}) + "\n")
            f.flush()
            os.fsync(f.fileno())


class GenhancerLlava(lmms):
    """lmms-eval model over a saved LLaVA directory.

    Args:
        pretrained (str): ``DIR`` written by ``llava-train`` (``RUN/final``).
        device (str | None, default None): ``cpu``, ``cuda``, ``cuda:N``; None picks CUDA when
            present. Under ``accelerate launch`` each process takes its own GPU.
        batch_size (int, default 8): requests per forward pass.
        dtype (str, default "auto"): ``float32``/``bfloat16``/``float16``; auto = bf16 on GPU, fp32 on CPU.
        choice_mode (str, default "generate"): ``likelihood`` answers NaturalBench rows by the likelier
            option instead of generating; a task can set it per task with the generation kwarg
            ``genhancer_choice_mode``.
        max_new_tokens (int | None, default None): upper bound on any task's ``max_new_tokens``.
        response_log (str | None, default None): JSONL of finished responses; reused on a rerun.
        runner: an already loaded :class:`~llava_integration.inference.LlavaRunner` (instead of ``pretrained``).
        progress (bool, default False): tqdm bar on stderr.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str = "",
        device: str | None = None,
        batch_size: int | str = 8,
        dtype: str = "auto",
        choice_mode: str = "generate",
        max_new_tokens: int | str | None = None,
        response_log: str | None = None,
        runner: Any = None,
        progress: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        import torch

        if choice_mode not in CHOICE_MODES:
            raise UserError(f"choice_mode must be one of {CHOICE_MODES}, got {choice_mode!r}")
        self.choice_mode = choice_mode
        self.batch_size = max(1, int(batch_size)) if str(batch_size).isdigit() else 8
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens not in (None, "", "None") else None
        self.progress = str(progress).lower() in ("1", "true", "yes")
        self.responses = ResponseLog(response_log)
        self.ignored_kwargs = sorted(kwargs)
        if runner is None:
            if not pretrained:
                raise UserError("genhancer_llava needs pretrained=DIR (a llava-train RUN/final)")
            path = check_llava_dir(pretrained)
            dev = self._pick_device(device)
            dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
            if dtype == "auto":
                torch_dtype = torch.bfloat16 if torch.device(dev).type == "cuda" else torch.float32
            elif dtype in dtypes:
                torch_dtype = dtypes[dtype]
            else:
                raise UserError(f"dtype must be auto or one of {list(dtypes)}, got {dtype!r}")
            runner = LlavaRunner.load(path, device=dev, dtype=torch_dtype)
        self.runner = runner
        self.name = str(pretrained) if pretrained else "in-memory"
        text_cfg = getattr(runner.model.config, "text_config", runner.model.config)
        self.max_positions = int(getattr(text_cfg, "max_position_embeddings", 0) or 0)

    def _pick_device(self, device: str | None) -> str:
        import torch

        world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
        if world > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            return str(self.accelerator.device)
        return device or ("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def device(self):
        return self.runner.device

    # --- helpers

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    @staticmethod
    def _first_image(visuals: Sequence | None):
        images = [v for v in (visuals or []) if v is not None and hasattr(v, "convert")]
        return images[0] if images else None

    def _budget(self, image, prompt: str, wanted: int) -> int:
        """``wanted`` new tokens, clipped by ``max_new_tokens`` and the positions left after the prompt."""
        n = wanted if self.max_new_tokens is None else min(wanted, self.max_new_tokens)
        if self.max_positions:
            encode: Callable | None = getattr(self.runner, "encode", None)
            used = len(encode(image, prompt)[0]) if encode is not None else 0
            n = min(n, self.max_positions - used)
        return max(1, n)

    @staticmethod
    def _cut(text: str, until: Sequence[str]) -> str:
        for stop in until:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return text

    def _likeliest(self, image, prompt: str, options: list[list[str]]) -> str:
        spellings = [s for group in options for s in group]
        scores = dict(zip(spellings, self.runner.choice_likelihood(image, prompt, spellings)))
        best = max(range(len(options)), key=lambda i: max(scores[s] for s in options[i]))
        return options[best][0]

    def _bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress or self.rank != 0)

    # --- lmms API

    def generate_until(self, requests) -> list[str]:
        """Greedy answers, batched by generation settings; ``until`` cuts the text after decoding."""
        out: list[str | None] = [None] * len(requests)
        pending: dict[tuple, list[tuple]] = {}
        for i, req in enumerate(requests):
            ctx, gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
            gk = dict(gen_kwargs or {})
            mode = gk.pop("genhancer_choice_mode", self.choice_mode)
            until = gk.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            wanted = int(gk.get("max_new_tokens", 128))
            key = ResponseLog.key(task, doc_id, ctx, mode, wanted, until, self.max_new_tokens)
            if key in self.responses.done:
                out[i] = self.responses.done[key]
                continue
            doc = self._doc(task, split, doc_id)
            image = self._first_image(doc_to_visual(doc))
            options = naturalbench_options(doc) if mode == "likelihood" else None
            if options is not None:
                out[i] = self._likeliest(image, ctx, options)
                self.responses.add([(key, {"task": task, "doc_id": doc_id, "mode": mode}, out[i])])
                continue
            budget = self._budget(image, ctx, wanted)
            pending.setdefault((budget, tuple(until)), []).append((i, image, ctx, doc_id, task, key))
        bar = self._bar(sum(len(v) for v in pending.values()), "genhancer_llava")
        for (budget, until), items in pending.items():
            items.sort(key=lambda it: len(it[2]))
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                texts = self.runner.generate(
                    [c[1] for c in chunk], [c[2] for c in chunk], max_new_tokens=budget
                )
                rows = []
                for (i, _, _, doc_id, task, key), text in zip(chunk, texts):
                    out[i] = self._cut(text, until)
                    rows.append((key, {"task": task, "doc_id": doc_id, "mode": "generate"}, out[i]))
                self.responses.add(rows)
                bar.update(len(chunk))
        bar.close()
        return [o if o is not None else "" for o in out]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Summed log-probability of each continuation as the answer turn, and whether greedy decoding
        gives it. Options of one prompt are scored in one batch."""
        groups: dict[tuple, list[tuple[int, str]]] = {}
        meta: dict[tuple, tuple] = {}
        for i, req in enumerate(requests):
            ctx, cont, doc_to_visual, doc_id, task, split = req.args[:6]
            doc = self._doc(task, split, doc_id)
            if callable(cont):  # output_type loglikelihood passes doc_to_target (api/task.py:1560)
                cont = cont(doc)
            cont = cont[0] if isinstance(cont, list | tuple) else cont
            g = (task, split, doc_id, ctx)
            groups.setdefault(g, []).append((i, str(cont).strip()))
            meta[g] = (doc_to_visual, doc)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for g, items in groups.items():
            doc_to_visual, doc = meta[g]
            image, ctx = self._first_image(doc_to_visual(doc)), g[3]
            conts = [c for _, c in items]
            scores = self.runner.choice_likelihood(image, ctx, conts)
            longest = max(len(self.runner.tokenizer(c, add_special_tokens=False).input_ids) for c in conts)
            greedy = self.runner.generate([image], [ctx], max_new_tokens=max(1, longest))[0].strip()
            for (i, c), s in zip(items, scores):
                out[i] = (float(s), greedy == c or greedy.startswith(c + " "))
        return out

    def generate_until_multi_round(self, requests) -> list:
        """Multi-round tasks: round 0 from the request, later rounds from the task's ``doc_to_text``
        (called with ``previous_output``, ``round_idx``, ``previous_round_info``) until it signals the end."""
        results = []
        for req in requests:
            ctx, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args[:7]
            doc = self._doc(task, split, doc_id)
            gk = dict(gen_kwargs or {})
            until = gk.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            image = self._first_image(doc_to_visual(doc))
            wanted = int(gk.get("max_new_tokens", 128))
            outputs = [
                self._cut(self.runner.generate([image], [ctx], self._budget(image, ctx, wanted))[0], until)
            ]
            info, final = None, None
            for round_idx in range(1, 64):
                visuals, ctx, done, round_res, info = doc_to_text(
                    doc, previous_output=list(outputs), round_idx=round_idx, previous_round_info=info
                )
                if done:
                    final = round_res
                    break
                image = self._first_image(visuals) or image
                outputs.append(
                    self._cut(
                        self.runner.generate([image], [ctx], self._budget(image, ctx, wanted))[0], until
                    )
                )
            results.append(tuple(final) if final is not None else tuple(outputs))
        return results
