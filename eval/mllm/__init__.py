"""MLLM benchmarks through lmms-eval: task YAMLs and hooks, the ``genhancer_llava`` model and its
entry point, answer parsing, official scoring, samples, coverage, rescore, the run, toy fixtures."""
