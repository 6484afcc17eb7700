"""The study's config tree and the enhance overrides it builds: each method's schedule choices
come from its tiny recipe, not from the study's code."""

from __future__ import annotations

from pathlib import Path

import pytest

from enhance.config import load_config
from eval.study.config import ALL_VARIANTS, StudyConfig, list_presets, load_study_config
from eval.study.protocol import enhance_overrides, method_overrides
from genhancer.runtime.errors import UserError


def test_every_preset_resolves_and_small_is_the_defaults():
    assert {"small", "smoke"} <= set(list_presets())
    for name in list_presets():
        load_study_config(name)
    assert load_study_config("small") == StudyConfig()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("methods=[enhanced, nope]", "methods"),
        ("world.backgrounds=[pink]", "world.backgrounds"),
        ("world.object_scale=0", "world.object_scale"),
        ("schedule.nope=1", "schedule.nope"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(UserError, match=key.split(".")[-1]):
        load_study_config("small", overrides=[override])


def test_world_options_list_only_what_differs_from_the_default_world():
    assert StudyConfig().world.options() == {}
    cfg = load_study_config(
        "small", overrides=["world.object_scale=1.6", "world.backgrounds=[white]", "world.jitter=false"]
    )
    assert cfg.world.options() == {"object_scale": 1.6, "backgrounds": ["white"], "jitter": False}


def _sets(items: list[str]) -> dict[str, str]:
    return dict(s.split("=", 1) for s in items)


def test_method_schedules_come_from_each_recipe(tmp_path: Path):
    cfg = load_study_config("small")
    clip = tmp_path / "clip"
    dcr = _sets(method_overrides(cfg, clip, 0, "dcr", str(tmp_path)))
    recipe = load_config("tiny", method="dcr")
    assert dcr["stage1.per_device_batch_size"] == str(recipe.stage1.per_device_batch_size) == "8"
    assert dcr["stage2.global_batch_size"] == "32" and dcr["stage2.lr"] == "0.0005"
    diva = _sets(method_overrides(cfg, clip, 0, "diva", str(tmp_path)))
    # one stage (its recipe's train.stages) with its own SGD learning rate: the study sets neither
    assert load_config("tiny", method="diva").train.stages == [2]
    assert "stage1.steps" not in diva and "stage2.lr" not in diva
    assert diva["stage2.steps"] == "100"
    own = _sets(method_overrides(cfg, clip, 0, "dcr-own-lr", str(tmp_path)))
    assert float(own["stage2.lr"]) == pytest.approx(1e-4)  # stage1_lr x DCR's 1e-5 / 1e-4


def test_genhancer_overrides_resolve_for_every_variant(tmp_path: Path):
    cfg = load_study_config("small", overrides=["schedule.enhance_sets=[flow.scale=2.0]"])
    for v in ("enhanced", "local", "one_stage"):
        ecfg = load_config(
            "tiny",
            overrides=enhance_overrides(cfg, tmp_path / "clip", 1, v, str(tmp_path), "genhancer-tiny:vae"),
        )
        assert ecfg.train.seed == 1 and ecfg.stage2.lr == 5e-4
        assert ecfg.method.flow.scale == 2.0
    assert set(ALL_VARIANTS) >= {
        "enhanced",
        "diva",
        "dcr",
        "dcr-own-lr",
        "naive-contrastive",
        "supervised-rare",
    }


def test_method_sets_apply_to_all_methods_or_to_the_one_they_name(tmp_path: Path):
    cfg = load_study_config(
        "small", overrides=["method_sets=['sd.unet_dtype=float32', 'diva:diva.num_tokens=16']"]
    )
    dcr = method_overrides(cfg, tmp_path, 0, "dcr", str(tmp_path))
    diva = method_overrides(cfg, tmp_path, 0, "diva", str(tmp_path))
    assert "sd.unet_dtype=float32" in dcr and "diva.num_tokens=16" not in dcr
    assert "diva.num_tokens=16" in diva and "sd.unet_dtype=float32" in diva


def test_a_testbed_world_is_written_once_as_an_image_folder(tmp_path: Path):
    from eval.study.protocol import enhancement_data

    default = load_study_config("smoke")
    assert enhancement_data(default, 1, str(tmp_path)) == ["data.toyworld_seed=2001", "data.toyworld_size=32"]
    cfg = load_study_config("smoke", overrides=["world.backgrounds=[white]", "world.object_scale=1.5"])
    sets = _sets(enhancement_data(cfg, 1, str(tmp_path)))
    folder = Path(sets["data.path"])
    assert sets["data.source"] == "imagefolder" and len(list(folder.glob("*.jpg"))) == 32
    rows = [line for line in (folder / "metadata.jsonl").read_text().splitlines() if line]
    assert len(rows) == 32
    before = (folder / "metadata.jsonl").stat().st_mtime_ns
    assert _sets(enhancement_data(cfg, 1, str(tmp_path)))["data.path"] == str(folder)
    assert (folder / "metadata.jsonl").stat().st_mtime_ns == before  # reused, not rewritten
