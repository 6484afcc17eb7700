"""Questions/s of the lmms-eval model ``genhancer_llava`` at several batch sizes.

Feeds the model's ``generate_until`` the same kind of request lmms-eval does (one image, one
question, greedy, a fixed ``max_new_tokens``) and times whole passes over ``--questions``
requests, interleaving batch sizes round by round so the ratios are measured under one load.
One image per question, so images/s = questions/s.

    python bench/mllm_speed.py                                   # random tiny LLaVA on CPU
    python bench/mllm_speed.py --pretrained runs/quickstart/llava-enhanced/final
    python bench/mllm_speed.py --pretrained runs/llava7b/final --batches 1,8,16 --questions 64  # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = [
    "What color is the shape? Answer with a single word.",
    "How many shapes are in the image?\nA. 1\nB. 2\nC. 3\nAnswer with the option's letter from the given choices directly.",
    "Is there a circle in the image? Please answer yes or no.",
    "Where is the shape? Answer with a single word.",
]


def requests(n: int, max_new_tokens: int):
    from lmms_eval.api.instance import Instance
    from PIL import Image

    docs = [
        Image.new("RGB", (48 + i % 5 * 8, 48), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        for i in range(n)
    ]
    reqs = [
        Instance(
            "generate_until",
            (
                QUESTIONS[i % len(QUESTIONS)],
                {"max_new_tokens": max_new_tokens},
                lambda d: [d],
                i,
                "bench",
                "test",
            ),
            0,
            {"task": "bench", "doc_id": i, "repeats": 1},
        )
        for i in range(n)
    ]
    return docs, reqs


def load_runner(pretrained: str, device: str | None):
    from llava_integration.inference import LlavaRunner

    if pretrained:
        return LlavaRunner.load(pretrained, device=device)
    from llava_integration.config import ModelConfig
    from llava_integration.model import build

    model, processor = build(
        ModelConfig(
            vision_tower="genhancer-tiny:clip", llm="genhancer-tiny:llm", gradient_checkpointing=False
        ),
        seed=0,
    )
    return LlavaRunner(model, processor, device=device or "cpu")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default="", help="a llava-train RUN/final (default: random tiny LLaVA)")
    p.add_argument("--device", default=None)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    args = p.parse_args(argv)

    import torch

    from eval.mllm.lmms_model import GenhancerLlava

    runner = load_runner(args.pretrained, args.device)
    docs, reqs = requests(args.questions, args.max_new_tokens)
    batches = [int(b) for b in args.batches.split(",")]
    models = {}
    for b in batches:
        m = GenhancerLlava(runner=runner, batch_size=b)
        m.task_dict = {"bench": {"test": docs}}
        models[b] = m
    models[batches[0]].generate_until(reqs[: min(4, len(reqs))])  # warm-up
    times: dict[int, list[float]] = {b: [] for b in batches}
    answers: dict[int, list[str]] = {}
    for _ in range(args.rounds):
        for b in batches:
            models[b].responses.done.clear()  # answered requests are served from memory otherwise
            t0 = time.perf_counter()
            answers[b] = models[b].generate_until(reqs)
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
            times[b].append(time.perf_counter() - t0)
    base = batches[0]
    result = {
        "model": args.pretrained or "random tiny LLaVA",
        "device": str(runner.device),
        "questions": args.questions,
        "max_new_tokens": args.max_new_tokens,
        "questions_per_s": {b: args.questions / statistics.median(times[b]) for b in batches},
        "same_answers_as_batch_" + str(base): {b: answers[b] == answers[base] for b in batches},
    }
    print(f"genhancer_llava generate_until, {args.questions} questions, max_new_tokens={args.max_new_tokens}, "
          f"{result['device']} ({result['model']})")  # fmt: skip
    for b in batches:
        q = result["questions_per_s"][b]
        print(f"  batch {b:3d}: {q:8.2f} questions/s (= images/s)   x{q / result['questions_per_s'][base]:.2f}   "
              f"answers identical to batch {base}: {result['same_answers_as_batch_' + str(base)][b]}")  # fmt: skip
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
