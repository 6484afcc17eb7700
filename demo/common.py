"""What every view of the demo shares and nothing else: the two sides and the page error.

Kept apart from :mod:`demo.models` so the views (and the registry's loaders, which import a
view's model class) depend on it without depending on each other: the demo's imports form no
circle (``tests/demo/test_demo_imports.py``).
"""

from __future__ import annotations

from genhancer.runtime.errors import UserError

#: The two sides every tab compares, in display order.
SIDES: tuple[str, ...] = ("original", "enhanced")
TITLES = {"original": "Original", "enhanced": "Enhanced"}
#: The enhanced run's final export in the model picker (per-step exports are "step N").
FINAL = "final"


class Unavailable(UserError):
    """A feature cannot run: a model was not given, or it failed to load (the text says which)."""
