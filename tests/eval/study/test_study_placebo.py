"""The placebo keeps what a variant changed in each matrix (its singular values) and nothing else."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from eval.study.placebo import placebo_delta, placebo_tower


def _low_rank(m: int, n: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) * 0.01


def test_the_placebo_keeps_the_spectrum_and_draws_new_directions():
    delta = _low_rank(48, 32, 4, 0)
    fake = placebo_delta(delta, torch.Generator().manual_seed(1))
    s, s_fake = torch.linalg.svdvals(delta.double()), torch.linalg.svdvals(fake.double())
    assert torch.allclose(s, s_fake, atol=1e-6 * float(s[0]))  # same rank, same values, same norm
    cos = torch.nn.functional.cosine_similarity(delta.flatten(), fake.flatten(), dim=0)
    assert abs(float(cos)) < 0.3  # a random direction, not the variant's
    again = placebo_delta(delta, torch.Generator().manual_seed(1))
    assert torch.equal(fake, again)  # a pure function of the generator's seed


def test_a_vector_keeps_its_norm_and_zero_stays_zero():
    v = torch.linspace(-1, 1, 17)
    fake = placebo_delta(v, torch.Generator().manual_seed(0))
    assert torch.isclose(fake.norm(), v.norm()) and not torch.allclose(fake, v)
    assert torch.count_nonzero(placebo_delta(torch.zeros(5, 3), torch.Generator())) == 0


def test_only_changed_image_side_tensors_are_replaced(tmp_path):
    g = torch.Generator().manual_seed(0)
    before = {
        "vision_model.a.weight": torch.randn(16, 8, generator=g),
        "vision_model.b.weight": torch.randn(8, 8, generator=g),
        "text_model.c.weight": torch.randn(8, 8, generator=g),
    }
    after = dict(before)
    after["vision_model.a.weight"] = before["vision_model.a.weight"] + _low_rank(16, 8, 2, 3)
    after["text_model.c.weight"] = before["text_model.c.weight"] + 1.0  # the text side is never touched
    for name, sd in (("orig", before), ("var", after)):
        (tmp_path / name).mkdir()
        save_file(sd, str(tmp_path / name / "model.safetensors"))
        (tmp_path / name / "config.json").write_text("{}")
    out = placebo_tower(tmp_path / "orig", tmp_path / "var", tmp_path / "plac", seed=5)
    got = load_file(str(out / "model.safetensors"))
    assert (out / "config.json").is_file()
    assert torch.equal(got["vision_model.b.weight"], before["vision_model.b.weight"])  # unchanged stays
    assert torch.equal(got["text_model.c.weight"], after["text_model.c.weight"])
    d_var = after["vision_model.a.weight"] - before["vision_model.a.weight"]
    d_fake = got["vision_model.a.weight"] - before["vision_model.a.weight"]
    assert torch.isclose(d_fake.norm(), d_var.norm(), rtol=1e-4)
    assert not torch.allclose(d_fake, d_var, atol=1e-4)


def test_aggregate_scores_records_without_per_run_extras():
    """The placebo's records carry metrics and items but no recon loss or tower change."""
    from eval.study.metrics import aggregate

    def record(seed, before, after):
        return {
            "seed": seed,
            "variants": ["p"],
            "metrics": {"original": {"probe/count": before}, "p": {"probe/count": after}},
            "items": {"original": {"probe/count": [True, False]}, "p": {"probe/count": [True, True]}},
        }

    agg = aggregate([record(0, 50.0, 52.0), record(1, 40.0, 43.0)])
    row = agg["table"]["p"]["probe/count"]
    assert row["per_seed_delta"] == [2.0, 3.0] and row["sign"][:2] == (2, 0)
    assert "tower_change" not in agg
