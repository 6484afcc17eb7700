"""DIVA's section of the config (``method:`` with ``name: diva``). Defaults: the official
``baaivision/DIVA`` scripts for OpenAI CLIP (SD-2.1-base, epsilon, VAE posterior mean)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from enhance.methods.sections import SDSection
from genhancer.runtime.configtools import doc

DivaTokens = Literal["random_local", "all_local", "pooled_avg"]
DivaText = Literal["full", "mean"]


def _diva_sd() -> SDSection:
    return SDSection(sample_posterior=False)


@dataclass
class DivaSection:
    name: Literal["diva"] = doc("diva", "diva: frozen SD, one stage, diffusion MSE into the whole tower")
    sd: SDSection = field(default_factory=_diva_sd)
    prompt: str = doc(
        "a photo of a .",
        "text whose SD text-encoder embedding the visual condition is added to (the official code's "
        "'a photo of a {}' with its single empty class)",
    )
    tokens: DivaTokens = doc(
        "random_local",
        "which tower tokens form the condition, each in the joint space: random_local ([CLS] + "
        "num_tokens-1 patch tokens drawn with replacement; official OpenAI CLIP) | all_local ([CLS] + "
        "every patch token; MetaCLIP) | pooled_avg (pooled token + patch tokens average-pooled over "
        "avg_window; SigLIP)",
    )
    num_tokens: int = doc(77, "random_local: condition length ([CLS] + num_tokens-1 patch tokens)")
    avg_window: int = doc(6, "pooled_avg: window of the 1-d average pooling (official: 6 at 224, 10 at 384)")
    text: DivaText = doc(
        "full",
        "full: the prompt embedding position by position (token count must equal its length; OpenAI "
        "CLIP) | mean: its mean over positions, added to every token (MetaCLIP, SigLIP)",
    )
    draws: int = doc(
        2, "timestep/noise draws per image per step, gradients summed (the official train_steps=2 loop)"
    )
