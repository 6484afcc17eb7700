"""CLIP-level benchmarks: MMVP-VLM, zero-shot, linear probes, the encoders they score, their toy
fixtures and the per-step curve."""
