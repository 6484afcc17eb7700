"""Hostile inputs: each gets a clear error or a counted skip, and nothing written before
it is lost. Earlier rows of the table live in tests/enhance/test_hostile.py (custom code),
tests/enhance/test_data_loading.py (truncated, zero-byte and bomb images) and
tests/llava_integration/test_data.py (``../`` image paths)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch

from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime.errors import UserError

# ------------------------------------------------------------------------- a tar shard cut in half


def test_tar_shard_cut_in_the_middle_is_skipped_and_counted(tmp_path):
    from enhance.data import CLIP_MEAN, CLIP_STD, ImageStream, build_source, make_transform
    from genhancer.toyworld import ToyWorld

    root = tmp_path / "wds"
    shards = sorted(ToyWorld(seed=7).write_webdataset(root, n=24, shard_size=8))
    assert len(shards) == 3
    intact = {p.name: p.stat().st_size for p in shards}
    cut = shards[1]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    source = build_source("webdataset", str(root))
    transform = make_transform(32, CLIP_MEAN, CLIP_STD)
    items = list(ImageStream(source, transform, max_epochs=1, shuffle=False))  # no crash
    keys = [i["key"].rsplit("/", 1)[-1] for i in items if not i.get("unreadable")]
    in_cut = {f"{k:09d}" for k in range(8, 16)}  # shard 00001 holds samples 8..15
    assert {k for k in keys if k not in in_cut} == {f"{k:09d}" for k in (*range(8), *range(16, 24))}
    survivors = [k for k in keys if k in in_cut]
    assert 0 < len(survivors) < 8 and len(set(keys)) == len(keys)  # what survives, nothing invented
    assert len(keys) + items[-1]["skipped"] <= 24
    # Reading never touched the other shards.
    assert {p.name: p.stat().st_size for p in shards if p != cut} == {
        k: v for k, v in intact.items() if k != cut.name
    }


# --------------------------------------------------------------------------- a wrong type in config


@pytest.mark.parametrize(
    "how,key",
    [("set", "stage1.steps"), ("yaml", "stage1.lr"), ("set", "backbone.trust_remote_code")],
)
def test_config_with_a_wrong_type_exits_2_naming_the_key(tmp_path, capsys, how, key):
    from enhance.cli import main

    out = tmp_path / "run"
    bad = {"stage1.steps": "many", "stage1.lr": "fast", "backbone.trust_remote_code": "[1, 2]"}[key]
    if how == "set":
        extra = ["--set", f"{key}={bad}"]
    else:
        section, name = key.split(".")
        (tmp_path / "bad.yaml").write_text(f"{section}:\n  {name}: {bad}\n")
        extra = ["--config", str(tmp_path / "bad.yaml")]
    assert main(["--preset", "tiny", *extra, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert key in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written


# ----------------------------------------------------------------- a pickled pytorch_model.bin model


@pytest.fixture()
def pickled_clip_dir(tmp_path, tmp_model_dirs) -> Path:
    """The tiny CLIP re-saved as ``pytorch_model.bin`` only (no safetensors)."""
    from transformers import CLIPModel

    out = tmp_path / "pickled_clip"
    shutil.copytree(tmp_model_dirs.clip, out)
    model = CLIPModel.from_pretrained(out)
    (out / "model.safetensors").unlink()
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out


def test_pickled_bin_backbone_is_refused_unless_allowed(pickled_clip_dir):
    from enhance.backbones.hf import load_hf_backbone

    with pytest.raises(UserError, match=r"pickled weights only \(pytorch_model.bin\).*backbone.allow_pickle"):
        load_hf_backbone("openai-clip", str(pickled_clip_dir), 32)
    backbone = load_hf_backbone("openai-clip", str(pickled_clip_dir), 32, allow_pickle=True)
    assert backbone.global_dim > 0


def test_pickled_bin_backbone_is_refused_through_the_config(tmp_path, pickled_clip_dir, tiny_enhance_config):
    from enhance.train import run

    cfg = tiny_enhance_config(f"backbone.name_or_path={pickled_clip_dir}", "logging.preview_count=0")
    assert cfg.backbone.allow_pickle is False
    with pytest.raises(UserError, match="backbone.allow_pickle"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------- the disk fills up during a checkpoint


def test_disk_full_during_a_checkpoint_keeps_the_last_complete_one(
    tmp_path, tiny_enhance_config, monkeypatch
):
    from enhance.train import run

    overrides = ("train.stages=[1]", "stage1.steps=3", "checkpoint.keep_last=20", "logging.preview_count=0")
    real = ckpt.save_file
    calls = {"n": 0}

    def filling_disk(tensors, filename, *args, **kwargs):
        if (
            Path(filename).parent.name == ".stage1_step0000003.tmp"
            and Path(filename).name == "optimizer.safetensors"
        ):
            calls["n"] += 1
            Path(filename).write_bytes(b"\0" * 100)  # a partly written file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", filling_disk)
    out = tmp_path / "run"
    with pytest.raises((UserError, OSError)) as info:
        run(tiny_enhance_config(*overrides), out)
    assert calls["n"] == 1
    msg = str(info.value)
    assert "No space left on device" in msg or "no space" in msg.lower()
    assert "stage1_step0000003" in msg and "stage1_step0000002" in msg  # what failed, what is kept

    root = out / "checkpoints"
    latest = ckpt.latest_checkpoint(root)
    assert latest.name == "stage1_step0000002"
    assert ckpt.load_weights(latest) and ckpt.load_optimizer(latest) and ckpt.read_state(latest)["step"] == 2
    assert not (root / ".stage1_step0000003.tmp").exists()  # the partial write is cleaned up

    # Space freed: --resume finishes and matches an uninterrupted run.
    monkeypatch.setattr(ckpt, "save_file", real)
    run(tiny_enhance_config(*overrides), out, resume=True)
    run(tiny_enhance_config(*overrides), tmp_path / "straight")
    a = ckpt.load_weights(root / "stage1_step0000003")
    b = ckpt.load_weights(tmp_path / "straight" / "checkpoints" / "stage1_step0000003")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
