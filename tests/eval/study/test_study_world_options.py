"""The toy world's nuisance options: the defaults give the original world pixel for pixel, and
each option changes what it says."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from genhancer.toyworld.world import BACKGROUND_RGB, Scene, ToyWorld, render

#: sha256 of 12 images + captions of ToyWorld(seed=7) rendered by world.py before the options
#: existed (commit 64cdeca), so the default world stays the world every golden loss was made on.
DEFAULT_WORLD_DIGEST = "f82b67657bb303b9e277f8cdbcaec8f21e277b0f24c99715f33f90894d79ef9b"


def _digest(world: ToyWorld) -> str:
    h = hashlib.sha256()
    for s in world.samples(12):
        h.update(s.image.tobytes())
        h.update(s.caption.encode())
    return h.hexdigest()


def test_default_options_render_the_original_world():
    assert _digest(ToyWorld(seed=7, image_size=64)) == DEFAULT_WORLD_DIGEST


def test_one_background_and_no_jitter_remove_those_nuisances():
    w = ToyWorld(seed=3, backgrounds=("white",), jitter=False)
    scenes = [w.scene(i) for i in range(40)]
    assert {s.background for s in scenes} == {"white"}
    assert all(shape.jitter == (0.0, 0.0) for s in scenes for shape in s.shapes)
    # the labels are still drawn from the whole world
    assert len({s.shapes[0].orientation for s in scenes}) == 4


def test_object_scale_grows_the_shapes_pixels():
    scene = Scene.build("square", "red", 1, "small", "up", "center")
    bg = np.array(BACKGROUND_RGB["white"])

    def covered(scale: float) -> int:
        img = np.asarray(render(scene, 64, object_scale=scale)).astype(int)
        return int((np.abs(img - bg).sum(-1) > 60).sum())

    small, big = covered(1.0), covered(2.0)
    assert 3.0 < big / small < 5.0  # area grows with the square of the diameter


@pytest.mark.parametrize("kwargs", [{"object_scale": 0}, {"backgrounds": ()}, {"backgrounds": ("pink",)}])
def test_bad_options_are_refused_by_name(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).rstrip("s")):
        ToyWorld(**kwargs)
