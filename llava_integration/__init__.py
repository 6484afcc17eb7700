"""LLaVA-1.5 recipe on transformers' ``LlavaForConditionalGeneration`` with a swapped-in vision tower.

``llava-train`` (:mod:`llava_integration.cli`) trains; :class:`llava_integration.inference.LlavaRunner`
answers questions with a trained model. ``DS_ZERO3`` is the shipped DeepSpeed ZeRO-3 accelerate config.
"""

from pathlib import Path

DS_ZERO3 = str(Path(__file__).parent / "accelerate" / "ds_zero3.yaml")
