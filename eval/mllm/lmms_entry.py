"""The ``lmms_eval.models`` entry point: a manifest naming ``genhancer_llava``, light to import.

lmms-eval loads entry points while ``lmms_eval.models`` is still initialising
(``models/__init__.py:231``), so this module imports nothing heavy; the model class is named by
its path and loaded only when a run asks for it. pyproject::

    [project.entry-points."lmms_eval.models"]
    genhancer_llava = "eval.mllm.lmms_entry:manifest"
"""

from __future__ import annotations

MODEL_NAME = "genhancer_llava"
CLASS_PATH = "eval.mllm.lmms_model.GenhancerLlava"


def manifest():
    """A ``ModelManifest`` for ``genhancer_llava`` (simple model class)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)
