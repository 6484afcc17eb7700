"""Checkpoint module: optimizer/RNG/weight round trips, atomic commit, listing order, pruning, and
which model weights a checkpoint holds."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from testkit import CHECKPOINT_FILES
from torch import nn

from genhancer.runtime import checkpoint as ckpt


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(5, 4, generator=gen), torch.randn(5, 3, generator=gen)
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _save(root, name, order, weights=None, optimizer_state=None):
    tmp = ckpt.begin(root, name)
    ckpt.write_payload(tmp, weights, optimizer_state)
    return ckpt.commit(root, name, {"order": list(order), "step": order[-1]})


def test_optimizer_state_round_trip_gives_a_bit_identical_next_step(tmp_path):
    model = _net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    _step(model, opt, 0)
    _step(model, opt, 1)
    path = _save(tmp_path, "ck", (1, 2), optimizer_state=opt.state_dict())

    # in memory first: every tensor and every group setting survives flatten -> unflatten
    tensors, meta = ckpt.flatten_optimizer_state(opt.state_dict())
    assert set(tensors) == {f"state.{i}.{k}" for i in range(4) for k in ("step", "exp_avg", "exp_avg_sq")}
    rebuilt = ckpt.unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(rebuilt["state"][i][k], v), (i, k)

    # then from disk into a fresh optimizer over a copy of the parameters
    twin = copy.deepcopy(model)
    fresh = torch.optim.AdamW(twin.parameters(), lr=1.0)  # wrong settings: the state must replace them
    fresh.load_state_dict(ckpt.load_optimizer(path))
    assert fresh.param_groups[0]["lr"] == 1e-2 and tuple(fresh.param_groups[0]["betas"]) == (0.8, 0.95)
    _step(model, opt, 2)
    _step(twin, fresh, 2)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


def test_non_tensor_optimizer_state_round_trips(tmp_path):
    state = {
        "state": {0: {"step": 3, "momentum_buffer": torch.ones(2)}, 2: {"count.x": 1.5}},
        "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}],
    }
    tensors, meta = ckpt.flatten_optimizer_state(state)
    back = ckpt.unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))
    assert back["state"][0]["step"] == 3 and torch.equal(back["state"][0]["momentum_buffer"], torch.ones(2))
    assert back["state"][2] == {"count.x": 1.5}
    assert back["param_groups"] == state["param_groups"]


def test_weights_round_trip_and_nothing_is_pickled(tmp_path):
    gen = torch.Generator().manual_seed(0)
    weights = {
        "projector.w": torch.randn(3, 4, generator=gen),
        "denoiser.b": torch.randn(5, generator=gen).to(torch.bfloat16),
        "lora_A.x": torch.randn(2, 2, generator=gen).half(),
    }
    model = _net()
    opt = torch.optim.AdamW(model.parameters())
    _step(model, opt, 0)
    path = _save(tmp_path, "ck", (1, 1), weights=weights, optimizer_state=opt.state_dict())
    back = ckpt.load_weights(path)
    assert set(back) == set(weights)
    for k, v in weights.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert sorted(p.name for p in path.iterdir()) == CHECKPOINT_FILES
    assert ckpt.read_state(path) == {"order": [1, 1], "step": 1}


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(123)
    path = _save(tmp_path, "ck", (1, 1))
    expected = torch.rand(4)
    torch.manual_seed(999)
    ckpt.restore_rng(ckpt.load_rng(path, rank=0))
    assert torch.equal(torch.rand(4), expected)
    assert ckpt.load_rng(path, rank=1) is None
    assert ckpt.load_optimizer(path) is None  # a payload without optimizer state


def test_commit_is_atomic(tmp_path):
    root = tmp_path / "checkpoints"
    tmp = ckpt.begin(root, "step_1")
    assert tmp.name == ".step_1.tmp"
    ckpt.write_payload(tmp, {"w": torch.ones(1)})
    (tmp / ckpt.STATE_FILE).write_text(json.dumps({"order": [9, 9]}))  # even a tmp with state.json
    assert ckpt.list_checkpoints(root) == [] and ckpt.latest_checkpoint(root) is None

    (root / "step_0").mkdir()  # a renamed folder that never got its state.json
    (root / "step_0" / "weights.safetensors").write_bytes(b"")
    (root / "broken").mkdir()
    (root / "broken" / ckpt.STATE_FILE).write_text("{not json")
    assert ckpt.list_checkpoints(root) == [] and ckpt.latest_checkpoint(root) is None

    final = ckpt.commit(root, "step_1", {"order": [1, 1]})
    assert final == root / "step_1" and not tmp.exists()
    assert ckpt.list_checkpoints(root) == [final] and ckpt.latest_checkpoint(root) == final
    assert torch.equal(ckpt.load_weights(final)["w"], torch.ones(1))


def test_begin_discards_a_stale_temp_folder(tmp_path):
    tmp = ckpt.begin(tmp_path, "a")
    (tmp / "junk").write_text("half written")
    tmp = ckpt.begin(tmp_path, "a")
    assert list(tmp.iterdir()) == []


def test_commit_replaces_a_checkpoint_of_the_same_name(tmp_path):
    _save(tmp_path, "ck", (1, 1), weights={"w": torch.zeros(1)})
    path = _save(tmp_path, "ck", (1, 2), weights={"w": torch.ones(1)})
    assert ckpt.list_checkpoints(tmp_path) == [path]
    assert ckpt.read_state(path)["step"] == 2 and ckpt.load_weights(path)["w"].item() == 1.0


def test_checkpoints_sort_by_stored_order_not_by_name(tmp_path):
    _save(tmp_path, "b_stage1_step10", (1, 10))
    _save(tmp_path, "c_stage1_step2", (1, 2))
    _save(tmp_path, "a_stage2_step1", (2, 1))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "c_stage1_step2",
        "b_stage1_step10",
        "a_stage2_step1",
    ]
    assert ckpt.latest_checkpoint(tmp_path).name == "a_stage2_step1"
    assert ckpt.list_checkpoints(tmp_path / "missing") == []


def test_prune_keeps_newest_and_protected_and_clears_temp_folders(tmp_path):
    for i in range(1, 6):
        _save(tmp_path, f"ck{i}", (1, i))
    ckpt.begin(tmp_path, "ck6")  # a crash mid-write
    (tmp_path / "notes").mkdir()  # not a checkpoint: never touched
    doomed = ckpt.prune(tmp_path, keep_last=2, protect={"ck1"})
    assert sorted(p.name for p in doomed) == ["ck2", "ck3"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ck1", "ck4", "ck5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck1", "ck4", "ck5", "notes"]
    assert ckpt.prune(tmp_path, keep_last=5) == []


# --- what a GenHancer checkpoint holds ------------------------------------------------------------


def test_checkpoint_state_holds_trainable_parts_only(tiny_genhancer_model, tiny_cfg, tmp_path):
    from enhance.stages import add_lora, checkpoint_state, load_checkpoint_state

    model = tiny_genhancer_model
    add_lora(model, tiny_cfg)
    state = checkpoint_state(model)
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"projector", "denoiser", "backbone"}
    backbone_keys = [k for k in state if k.startswith("backbone.")]
    assert backbone_keys and all("lora_" in k for k in backbone_keys)  # the frozen tower stays out
    assert not any(k.startswith("codec.") for k in state)  # so does the VAE
    assert set(state) >= {k for k in model.state_dict() if k.startswith(("projector.", "denoiser."))}

    path = _save(tmp_path, "ck", (2, 1), weights=state)
    original = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state:
                p.add_(1.0)
    load_checkpoint_state(model, ckpt.load_weights(path))
    for k, v in checkpoint_state(model).items():
        assert torch.equal(v, original[k]), k


def test_load_checkpoint_state_rejects_a_mismatched_file(tiny_genhancer_model):
    from enhance.stages import checkpoint_state, load_checkpoint_state

    state = checkpoint_state(tiny_genhancer_model)
    with pytest.raises(RuntimeError, match="missing"):
        load_checkpoint_state(tiny_genhancer_model, {k: v for k, v in list(state.items())[1:]})
    with pytest.raises(RuntimeError, match="unexpected"):
        load_checkpoint_state(tiny_genhancer_model, {**state, "projector.extra": torch.zeros(1)})
