"""The sensitivity measurement: conditions, oracle one-hots and the shares, by hand; the held-out
draws are the same for every condition; one smoke measurement end to end (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from eval.study import conditions as cond
from eval.study import sensitivity as sens
from eval.study.config import load_study_config
from genhancer.runtime.errors import UserError


def test_conditions_name_their_oracle_attributes():
    assert cond.oracle_attributes("token") == ()
    assert cond.oracle_attributes("null") == ()
    assert cond.oracle_attributes("token+rare") == ("count", "orientation", "position")
    assert cond.oracle_attributes("token+all") == (
        "shape",
        "color",
        "size",
        "count",
        "orientation",
        "position",
    )
    assert cond.oracle_attributes("token+orientation,count") == ("orientation", "count")
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        cond.oracle_attributes("token+colour")
    with pytest.raises(ValueError, match="only denoiser 'sd'"):
        cond.check_conditions(["caption"], "genhancer")


def test_bad_condition_is_a_user_error_naming_the_key():
    with pytest.raises(UserError, match="sensitivity.conditions"):
        load_study_config("small", overrides=["sensitivity.conditions=[token+colour]"])


def test_one_hots_by_hand():
    attrs = [
        {"count": 2, "orientation": "left", "shape": "circle"},
        {"count": 1, "orientation": "up", "shape": "diamond"},
    ]
    got = cond.one_hots(attrs, ("count", "orientation"), max_count=3)
    want = torch.tensor([[0, 1, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(got, want)
    assert cond.one_hots(attrs, (), 3).shape == (2, 0)


def test_condition_features_null_is_zeros_and_oracle_appends():
    enc = sens.Encoded(
        train_tokens=torch.ones(2, 3),
        test_tokens=torch.full((2, 3), 2.0),
        train_post=(torch.zeros(2, 1), torch.zeros(2, 1)),
        test_post=(torch.zeros(2, 1), torch.zeros(2, 1)),
        train_attrs=[{"size": "small"}, {"size": "large"}],
        test_attrs=[{"size": "large"}, {"size": "large"}],
        test_captions=["a", "b"],
        max_count=3,
    )
    assert torch.equal(sens.condition_features(enc, "null", "train"), torch.zeros(2, 3))
    got = sens.condition_features(enc, "token+size", "test")
    assert torch.equal(got, torch.tensor([[2.0, 2, 2, 0, 1], [2.0, 2, 2, 0, 1]]))


def _record(seed, losses):
    return {"seed": seed, "conditions": {c: {"loss": v, "by_t": {"0.00-1.00": v}} for c, v in losses.items()}}


def test_shares_by_hand():
    records = [
        _record(0, {"null": 1.0, "token": 0.9, "token+rare": 0.8}),
        _record(1, {"null": 2.0, "token": 1.9, "token+rare": 1.7}),
    ]
    out = sens.shares(records, ["token", "token+rare", "null"])
    s = out["summary"]
    assert math.isclose(s["share/token"]["mean"], (0.1 + 0.05) / 2)
    assert math.isclose(s["share/token+rare"]["mean"], (0.2 + 0.15) / 2)
    extra = [(0.9 - 0.8) / 1.0, (1.9 - 1.7) / 2.0]
    assert math.isclose(s["extra/token+rare"]["mean"], sum(extra) / 2)
    assert s["extra/token+rare"]["std"] == 0.0 and s["extra/token+rare"]["resolved_3std"]
    assert not s["share/token"]["resolved_3std"]  # 0.075 ± 0.035: under 3 std
    assert math.isclose(s["loss/null"]["mean"], 1.5)
    assert "| share/token+rare |" in sens.markdown(out, "t")


class _Task:
    def draw_t(self, n, gen):
        return torch.rand(n, generator=gen)


def test_heldout_draws_are_a_function_of_the_seed_alone():
    enc = sens.Encoded(
        torch.zeros(1, 1),
        torch.zeros(4, 1),
        (torch.zeros(1, 2), torch.zeros(1, 2)),
        (torch.zeros(4, 2), torch.zeros(4, 2)),
        [],
        [],
        [],
        3,
    )
    a, b = sens.heldout_draws(enc.test_post[0], _Task(), 2), sens.heldout_draws(enc.test_post[0], _Task(), 2)
    for da, db in zip(a, b, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(da, db, strict=True))
    assert not torch.equal(a[0][1], a[1][1])  # draws differ from each other


@pytest.mark.slow
def test_sensitivity_smoke_measures_every_condition_and_reuses_them(tmp_path):
    from eval.study.cli import main

    argv = ["--preset", "smoke", "--part", "sensitivity", "--seeds", "0", "--threads", "1"]
    argv += ["--set", "sensitivity.denoisers=[genhancer]", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    folder = tmp_path / "genhancer" / "seed0"
    for c in ("token", "token+rare", "token+all", "null"):
        assert (folder / f"{c}.json").is_file()
    before = (folder / "token.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (folder / "token.json").stat().st_mtime_ns == before
    assert "share/token+all" in (tmp_path / "sensitivity.md").read_text()
