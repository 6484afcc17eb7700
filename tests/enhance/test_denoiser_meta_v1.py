"""A format-1 ``genhancer.json`` (the method's settings in top-level sections, no ``format``) reads
back through the config tree's own legacy migration: the same keys land where an old config
file's would."""

from __future__ import annotations

import json

from enhance.config import migrate_legacy
from enhance.export_meta import EXPORT_FORMAT
from enhance.layout import read_denoiser_meta

BACKBONE = {"name_or_path": "genhancer-tiny:clip", "image_size": 64}


def _read(tmp_path, data: dict):
    (tmp_path / "genhancer.json").write_text(json.dumps(data))
    return read_denoiser_meta(tmp_path)


def test_genhancer_v1_sections_move_under_the_method(tmp_path):
    v1 = {
        "method": "genhancer",
        "denoiser": {"kind": "discrete", "num_layers": 3, "axes_dims_rope": [8, 28, 28]},
        "vae": {"name_or_path": "genhancer-tiny:vae", "scaling_factor": 0.5},
        "flow": {"preview_steps": 7},
        "backbone": BACKBONE,
    }
    meta = _read(tmp_path, v1)
    assert meta.format == EXPORT_FORMAT and meta.backbone == BACKBONE
    assert meta.method_config == {
        "name": "genhancer",
        "denoiser": v1["denoiser"],
        "vae": v1["vae"],
        "flow": v1["flow"],
    }
    assert meta.denoiser_kind == "discrete"
    assert meta.method_config == migrate_legacy({**v1, "method": {"name": "genhancer"}})["method"]


def test_frozen_sd_v1_keeps_its_vae_scaling_in_the_sd_section(tmp_path):
    v1 = {
        "method": "dcr",
        "sd": {"path": "genhancer-tiny:sd-v", "target": "v_prediction"},
        "vae": {"name_or_path": "ignored", "scaling_factor": 0.18215, "sample_posterior": False},
        "backbone": BACKBONE,
    }
    meta = _read(tmp_path, v1)
    sd = {
        "path": "genhancer-tiny:sd-v",
        "target": "v_prediction",
        "scaling_factor": 0.18215,
        "sample_posterior": False,
    }
    assert meta.method_config == {"name": "dcr", "sd": sd}
    assert meta.denoiser_kind == "sd"


def test_the_current_format_is_read_as_written(tmp_path):
    current = {
        "method": "genhancer",
        "method_config": {"name": "genhancer"},
        "backbone": BACKBONE,
        "format": 2,
    }
    assert _read(tmp_path, current).method_config == {"name": "genhancer"}
