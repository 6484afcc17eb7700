"""Benchmarks by kind, and the leaderboard on top of them.

* :mod:`eval.clip`: CLIP-level benchmarks scored on a dual encoder (MMVP-VLM, zero-shot, probes).
* :mod:`eval.mllm`: MLLM benchmarks on a LLaVA through lmms-eval (tasks, model, scoring, rescore).
* here: the benchmark registry (:mod:`eval.benchmarks`), the leaderboard, its report, the paper's
  numbers, the config and the ``leaderboard`` CLI.
"""
