"""MMVP-VLM data: fixture layout matches the published one, loading, wiring, and bad input."""

from __future__ import annotations

import csv
import hashlib
import random
import shutil

import pytest
from PIL import Image

from eval.clip.fixtures import MMVP_PATTERN_ATTRIBUTES
from eval.clip.mmvp_vlm import PATTERNS, evaluate, load_mmvp_vlm, resolve_mmvp_vlm
from genhancer.runtime.errors import UserError
from genhancer.toyworld.world import NUMBER_WORDS, ToyWorld, attributes, caption


def test_fixture_layout_matches_published(toy_mmvp_root):
    lines = (toy_mmvp_root / "Questions.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "Question ID,Type,Statement"
    rows = list(csv.reader(lines[1:]))
    assert [int(r[0]) for r in rows] == list(range(1, 13))
    assert {r[1] for r in rows} == {"Color and Appearance", "Quantity and Count"}
    for qid, qtype, _ in rows:
        assert (toy_mmvp_root / "MLLM_VLM Images" / qtype / f"{qid}.jpg").is_file()
    with Image.open(toy_mmvp_root / "MLLM_VLM Images" / rows[0][1] / "1.jpg") as im:
        assert im.format == "JPEG" and im.size == (32, 32)


@pytest.mark.parametrize("key", list(MMVP_PATTERN_ATTRIBUTES))
def test_pairs_differ_in_exactly_the_pattern_attribute(key):
    attr, make = MMVP_PATTERN_ATTRIBUTES[key]
    world = ToyWorld(seed=0)
    for j in range(10):
        a, b = make(world, world.scene(j), random.Random(j))
        la, lb = attributes(a), attributes(b)
        assert [k for k in la if la[k] != lb[k]] == [attr]
        assert caption(a) != caption(b)
        named = NUMBER_WORDS[lb[attr] - 1] if attr == "count" else str(lb[attr])
        assert named in caption(b) or named == "none"  # each statement names its own value
    assert key in dict(PATTERNS)


def test_load_assigns_patterns_by_pair_index(toy_mmvp_root):
    data = load_mmvp_vlm(toy_mmvp_root, pairs_per_pattern=3)
    assert [p.pattern for p in data.pairs] == ["color"] * 3 + ["quantity"] * 3
    assert data.pairs[0].first.question_id == 1 and data.pairs[0].second.question_id == 2
    assert data.revision.startswith("sha256:")
    assert load_mmvp_vlm(toy_mmvp_root, 3).revision == data.revision  # deterministic answer key


def _lookup(root):
    """image bytes hash -> qid and 'a photo of ' + statement -> qid, from the files."""
    images, texts = {}, {}
    for qid, qtype, statement in list(csv.reader((root / "Questions.csv").read_text().splitlines()))[1:]:
        with Image.open(root / "MLLM_VLM Images" / qtype / f"{qid}.jpg") as im:
            images[hashlib.sha1(im.convert("RGB").tobytes()).hexdigest()] = int(qid)
        texts["a photo of " + statement] = int(qid)
    return images, texts


def test_evaluate_wiring_with_a_perfect_and_a_swapped_encoder(toy_mmvp_root, fake_encoder):
    images, texts = _lookup(toy_mmvp_root)
    assert len(texts) == 12  # statements are distinct, so the lookup is exact

    def one_hot(i):
        return [1.0 if k == i else 0.0 for k in range(13)]

    def image_vec(im):
        return one_hot(images[hashlib.sha1(im.tobytes()).hexdigest()])

    data = load_mmvp_vlm(toy_mmvp_root, pairs_per_pattern=3)
    perfect = fake_encoder(image_vec, lambda t: one_hot(texts[t]), scale=100.0)
    score = evaluate(perfect, data)
    assert score.per_pattern == {"color": 100.0, "quantity": 100.0} and score.average == 100.0

    partner = {q: q + 1 if q % 2 else q - 1 for q in range(1, 13)}
    swapped = fake_encoder(image_vec, lambda t: one_hot(partner[texts[t]]))
    assert evaluate(swapped, data).average == 0.0
    assert evaluate(perfect, data, limit=2).per_pattern == {"color": 100.0}


def _copy(root, tmp_path):
    dst = tmp_path / "mmvp_vlm"
    shutil.copytree(root, dst)
    return dst


def test_missing_csv_names_the_file(tmp_path):
    with pytest.raises(UserError, match="Questions.csv"):
        load_mmvp_vlm(tmp_path)


def test_wrong_columns_name_the_file(toy_mmvp_root, tmp_path):
    root = _copy(toy_mmvp_root, tmp_path)
    text = (root / "Questions.csv").read_text().replace("Question ID,Type,Statement", "id,kind,text")
    (root / "Questions.csv").write_text(text)
    with pytest.raises(UserError, match=r"Questions.csv: columns are \['id', 'kind', 'text'\]"):
        load_mmvp_vlm(root)


def test_missing_image_names_the_image(toy_mmvp_root, tmp_path):
    root = _copy(toy_mmvp_root, tmp_path)
    (root / "MLLM_VLM Images" / "Quantity and Count" / "8.jpg").unlink()
    with pytest.raises(UserError, match="Quantity and Count/8.jpg"):
        load_mmvp_vlm(root)


def test_misaligned_pairs_are_rejected(toy_mmvp_root, tmp_path):
    root = _copy(toy_mmvp_root, tmp_path)
    lines = (root / "Questions.csv").read_text().splitlines()
    (root / "Questions.csv").write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    with pytest.raises(UserError, match="11 questions, expected pairs"):
        load_mmvp_vlm(root)
    # even count, but rows 1 and 3 swapped: ids 3, 2 do not form a pair
    (root / "Questions.csv").write_text(
        "\n".join([lines[0], lines[3], lines[2], lines[1], *lines[4:]]) + "\n"
    )
    with pytest.raises(UserError, match="Question IDs 3, 2; expected an odd id"):
        load_mmvp_vlm(root)


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="MMVP/MMVP_VLM.*--data-root"):
        resolve_mmvp_vlm("MMVP/MMVP_VLM")


def test_same_model_same_numbers(toy_mmvp_root, tmp_model_dirs):
    import pytest

    from eval.clip.encoders import load_encoder
    from eval.clip.mmvp_vlm import pair_similarities, score_pairs

    data = load_mmvp_vlm(toy_mmvp_root, pairs_per_pattern=3)
    patterns = [p.pattern for p in data.pairs]
    a = pair_similarities(load_encoder(str(tmp_model_dirs.clip), device="cpu", batch_size=4), data)
    b = pair_similarities(load_encoder(str(tmp_model_dirs.clip), device="cpu", batch_size=7), data)
    # batching moves float32 embeddings in their last bits only; the scores are identical
    assert [x for m in a for r in m for x in r] == pytest.approx(
        [x for m in b for r in m for x in r], abs=1e-4
    )
    assert score_pairs(a, patterns) == score_pairs(b, patterns)
