"""Config tree: merge order, strictness (unknown keys, types), presets, validation, hashing, YAML."""

from __future__ import annotations

import re

import pytest
import yaml

from enhance.config import (
    PRESETS_DIR,
    RESUME_ALLOWED_CHANGES,
    EnhanceConfig,
    StageConfig,
    load_config,
)
from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError

PRESETS = configtools.list_presets(PRESETS_DIR)


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _leaf_keys(tree, prefix=""):
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            yield from _leaf_keys(v, key)
        else:
            yield key


# --- merge order ------------------------------------------------------------------------------


def test_defaults_are_the_paper_settings():
    cfg = load_config()
    assert cfg == EnhanceConfig()
    assert (cfg.stage1.lr, cfg.stage2.lr) == (1e-4, 1e-5)
    assert (cfg.stage2.lora_r, cfg.stage2.lora_alpha, cfg.stage2.lora_dropout) == (16, 16, 0.1)
    assert cfg.method.denoiser.num_attention_heads * cfg.method.denoiser.attention_head_dim == 3072
    assert (cfg.method.denoiser.num_layers, cfg.method.denoiser.num_single_layers) == (2, 4)
    assert (cfg.method.vae.scaling_factor, cfg.method.vae.shift_factor) == (0.3611, 0.1159)
    assert (cfg.method.flow.timestep_sampler, cfg.method.flow.scale) == ("logit_normal", 1.0)


def test_merge_order_defaults_preset_file_set(tmp_path):
    """Each layer overrides the one before it, and only the keys it names."""
    default = load_config()
    preset = load_config("tiny")
    assert preset.stage1.lr == 1e-3 != default.stage1.lr  # preset beats defaults
    assert preset.stage1.weight_decay == default.stage1.weight_decay  # untouched key keeps default

    cfg_file = _write(tmp_path / "c.yaml", {"stage1": {"lr": 5e-4}, "logging": {"every": 3}})
    from_file = load_config("tiny", cfg_file)
    assert from_file.stage1.lr == 5e-4  # file beats preset
    assert from_file.stage1.steps == preset.stage1.steps == 120  # deep merge: sibling kept
    assert from_file.logging.every == 3

    final = load_config("tiny", cfg_file, ["stage1.lr=0.0002", "stage1.steps=7"])
    assert final.stage1.lr == 2e-4  # --set beats the file
    assert final.stage1.steps == 7
    assert final.logging.every == 3  # the file still applies where --set is silent

    # later --set wins over an earlier one
    assert load_config("tiny", overrides=["stage1.steps=3", "stage1.steps=4"]).stage1.steps == 4


def test_config_file_may_name_its_preset(tmp_path):
    cfg_file = _write(tmp_path / "c.yaml", {"preset": "tiny", "stage2": {"lora_r": 4}})
    cfg = load_config(config_file=cfg_file)
    assert cfg.backbone.name_or_path == "genhancer-tiny:clip"  # from the preset
    assert cfg.stage2.lora_r == 4


def test_set_values_keep_their_yaml_types():
    cfg = load_config(
        "tiny",
        overrides=["stage1.betas=[0.8, 0.95]", "logging.progress=false", "data.path=", "stage1.steps=2.0"],
    )
    assert cfg.stage1.betas == [0.8, 0.95]
    assert cfg.logging.progress is False
    assert cfg.data.path == ""
    assert cfg.stage1.steps == 2 and type(cfg.stage1.steps) is int  # lossless float -> int
    # a whole section may be given as a mapping; it merges into the preset's section
    section = load_config("tiny", overrides=["stage1={lr: 1, steps: 5}"]).stage1
    assert (section.lr, section.steps, section.global_batch_size) == (1.0, 5, 32)


@pytest.mark.parametrize("item", ["stage1.lr", "=3", "  =x"])
def test_set_needs_key_equals_value(item):
    with pytest.raises(UserError, match="key=value"):
        load_config("tiny", overrides=[item])


# --- strictness -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("nope=1", "'nope'"),
        ("stage1.nope=1", "'stage1.nope'"),
        ("method.denoiser.axes_dim_rope=[4, 6, 6]", "'method.denoiser.axes_dim_rope'"),
        ("stage2.lora_rank=4", "'stage2.lora_rank'"),
    ],
)
def test_unknown_key_names_the_dotted_key(override, key):
    with pytest.raises(UserError, match="unknown config key") as exc:
        load_config("tiny", overrides=[override])
    assert key in str(exc.value)


def test_unknown_key_in_config_file_names_the_dotted_key(tmp_path):
    cfg_file = _write(tmp_path / "c.yaml", {"backbone": {"nme_or_path": "x"}})
    with pytest.raises(UserError, match=r"'backbone\.nme_or_path'"):
        load_config("tiny", cfg_file)


def test_unknown_key_in_a_preset_names_the_dotted_key(tmp_path):
    (tmp_path / "p.yaml").write_text("method:\n  flow:\n    scael: 2.0\n")
    with pytest.raises(UserError, match=r"'method\.flow\.scael'"):
        configtools.resolve(EnhanceConfig, tmp_path, "p")


@pytest.mark.parametrize(
    "override, key",
    [
        ("stage1.lr=abc", "'stage1.lr'"),
        ("train.stages=x", "'train.stages'"),
        ("train.stages=[1, x]", r"'train.stages\[1\]'"),
        ("stage1.steps=1.5", "'stage1.steps'"),
        ("stage1.steps=true", "'stage1.steps'"),  # a bool is not an int here
        ("logging.progress=maybe", "'logging.progress'"),
        ("logging.progress=1", "'logging.progress'"),
        ("data.crop_scale=[a, b]", "'data.crop_scale"),
        ("stage1=3", "'stage1'"),
        ("stage1.lr.x=1", "'stage1.lr'"),
    ],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(UserError, match=key):
        load_config("tiny", overrides=[override])


def test_exponent_floats_without_a_dot(tmp_path):
    """YAML 1.1 reads ``2e-5`` (no dot) as a string; float fields must still take it (the CLI's
    own help example is ``--set stage2.lr=2e-5``)."""
    assert load_config("tiny", overrides=["stage2.lr=2e-5"]).stage2.lr == 2e-5
    cfg_file = _write(tmp_path / "c.yaml", {"stage1": {"lr": "3e-4"}})
    assert load_config("tiny", cfg_file).stage1.lr == 3e-4
    with pytest.raises(UserError, match="'stage2.lr'"):
        load_config("tiny", overrides=["stage2.lr=2e-5x"])


@pytest.mark.parametrize(
    "override, attr, expected",
    [
        ("train.mixed_precision=no", ("train", "mixed_precision"), "no"),
        ("backbone.revision=0755123", ("backbone", "revision"), "0755123"),
    ],
)
def test_set_keeps_string_values_verbatim(override, attr, expected):
    cfg = load_config("tiny", overrides=[override])
    assert getattr(getattr(cfg, attr[0]), attr[1]) == expected


# --- presets ----------------------------------------------------------------------------------


def test_presets_are_listed():
    assert "tiny" in PRESETS and "openai-clip-l14-224" in PRESETS
    assert len(PRESETS) == len(list(PRESETS_DIR.glob("*.yaml")))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_resolves_validates_and_builds_on_meta(name):
    from enhance.cli import describe

    cfg = load_config(name)
    cfg.validate()
    assert configtools.preset_description(PRESETS_DIR, name)  # --list-presets shows something
    if not name.startswith("tiny"):
        assert re.search(rf"-{cfg.backbone.image_size}(-|$)", name)  # the resolution the name promises
    if cfg.method.denoiser.kind != "continuous":
        return  # discrete presets: see test_cli.py::test_describe_discrete_preset_counts_its_parts
    counts = describe(cfg)["parameters"]  # a count for each part the preset defines
    assert isinstance(counts["denoiser"], int) and counts["denoiser"] > 0
    if not name.startswith("tiny"):  # paper presets keep the paper's denoiser (Table 7)
        assert 1.30e9 < counts["denoiser"] < 1.32e9
        assert cfg.method.denoiser == EnhanceConfig().method.denoiser


def test_preset_base_is_one_level(tmp_path):
    (tmp_path / "root.yaml").write_text("description: r\nstage1:\n  lr: 0.5\n  steps: 9\n")
    (tmp_path / "child.yaml").write_text("base: root\nstage1:\n  steps: 3\n")
    (tmp_path / "grandchild.yaml").write_text("base: child\n")
    (tmp_path / "orphan.yaml").write_text("base: missing\n")

    cfg = configtools.resolve(EnhanceConfig, tmp_path, "child")
    assert (cfg.stage1.lr, cfg.stage1.steps) == (0.5, 3)  # base merged under the child
    assert configtools.load_preset(tmp_path, "child") == {"stage1": {"lr": 0.5, "steps": 3}}
    with pytest.raises(UserError, match="may not name a base"):
        configtools.load_preset(tmp_path, "grandchild")
    with pytest.raises(UserError, match="unknown base 'missing'"):
        configtools.load_preset(tmp_path, "orphan")


def test_unknown_preset_lists_the_choices():
    with pytest.raises(UserError, match="unknown preset 'nope'") as exc:
        load_config("nope")
    assert "tiny" in str(exc.value)


@pytest.mark.parametrize(
    "text, match", [("a: [1,\n", "not valid YAML"), ("- 1\n- 2\n", "mapping at the top level")]
)
def test_bad_config_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_config("tiny", str(path))
    with pytest.raises(UserError, match="not found"):
        load_config("tiny", str(tmp_path / "missing.yaml"))


# --- validate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["method.denoiser.axes_dims_rope=[4, 6, 8]"],
            r"axes_dims_rope \[4, 6, 8\] must sum to .*head_dim 16",
        ),
        (["method.denoiser.axes_dims_rope=[16]"], "3 entries"),
        (["stage1.global_batch_size=10", "stage1.per_device_batch_size=4"], "stage1.global_batch_size 10"),
        (["stage2.per_device_batch_size=0"], "stage2: batch sizes"),
        (["backbone.family=clip"], "'backbone.family'"),
        (["method.denoiser.kind=gan"], "'method.denoiser.kind'"),
        (["method.denoiser.kind=sd"], "'method.denoiser.kind'"),
        (["method.flow.timestep_sampler=cosine"], "'method.flow.timestep_sampler'"),
        (["method.name=gan"], "'method.name'"),
        (["stage2.variant=both"], "'stage2.variant'"),
        (["data.source=s3"], "'data.source'"),
        (["train.mixed_precision=fp8"], "'train.mixed_precision'"),
        (["method.flow.scale=0"], "flow.scale"),
        (["backbone.local_token_ratio=1.5"], "local_token_ratio"),
        (["train.stages=[]"], "train.stages"),
        (["train.stages=[3]"], "train.stages"),
        (["train.stages=[2, 1]"], "increasing"),
        (["train.one_stage=true"], "train.stages=\\[2\\]"),
        (["data.crop_scale=[0.9, 0.5]"], "data.crop_scale"),
        (["checkpoint.every=0"], "checkpoint.every"),
        (["stage1.lr=-1.0"], "stage1"),
    ],
)
def test_validate_rejects(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config("tiny", overrides=overrides)


def test_validate_accepts_the_one_stage_ablation():
    cfg = load_config("tiny", overrides=["train.one_stage=true", "train.stages=[2]"])
    assert cfg.train.one_stage and cfg.train.stages == [2]


def test_validate_is_also_a_method_on_hand_built_trees():
    cfg = EnhanceConfig(stage1=StageConfig(global_batch_size=6, per_device_batch_size=4))
    with pytest.raises(UserError, match="multiple"):
        cfg.validate()


# --- hashing and YAML round trip ----------------------------------------------------------------


def test_config_hash_ignores_listed_keys_only():
    base = load_config("tiny")
    h = configtools.config_hash(base, RESUME_ALLOWED_CHANGES)
    assert len(h) == 16 and h == configtools.config_hash(load_config("tiny"), RESUME_ALLOWED_CHANGES)

    benign = load_config("tiny", overrides=["checkpoint.every=7", "data.num_workers=3", "stage1.steps=9"])
    assert configtools.config_hash(benign, RESUME_ALLOWED_CHANGES) == h
    assert configtools.config_hash(benign) != configtools.config_hash(base)  # only ignored when listed

    for change in ("stage1.lr=0.5", "data.toyworld_seed=5", "backbone.name_or_path=other"):
        changed = load_config("tiny", overrides=[change])
        assert configtools.config_hash(changed, RESUME_ALLOWED_CHANGES) != h, change
    assert base == load_config("tiny")  # hashing did not mutate the tree


def test_dump_yaml_round_trips(tmp_path):
    cfg = load_config(
        "tiny",
        overrides=[
            "train.mixed_precision='no'",
            "data.path='yes'",  # a string YAML would read as a bool if written unquoted
            "backbone.revision='0123'",
            "stage1.betas=[0.5, 0.75]",
            "stage2.lora_target_modules=[q_proj, v_proj]",
            "backbone.local_token_ratio=0.25",
            "train.stages=[2]",
            "train.one_stage=true",
        ],
    )
    path = tmp_path / "config.yaml"
    path.write_text(configtools.dump_yaml(cfg))
    data = configtools.load_yaml(path)
    back = configtools.from_dict(EnhanceConfig, data)
    assert back == cfg
    assert configtools.diff_keys(data, configtools.to_dict(cfg)) == []  # what --resume compares


def test_field_docs_cover_every_key():
    from enhance.config import EnhanceConfig
    from genhancer.runtime.configtools import field_docs

    docs = field_docs(EnhanceConfig)
    keys = set(_leaf_keys(configtools.to_dict(EnhanceConfig())))
    assert set(docs) == keys
    assert all(docs[k].strip() for k in keys), [k for k in keys if not docs[k].strip()]
    assert "stage2.lora_r" in docs and "method.denoiser.axes_dims_rope" in docs


def test_diff_keys():
    a = {"x": {"y": 1, "z": [1, 2]}, "w": 0}
    b = {"x": {"y": 2, "z": [1, 2], "n": 1}, "w": 0}
    assert configtools.diff_keys(a, b) == ["x.n", "x.y"]
