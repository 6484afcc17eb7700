"""Zero-shot top-k and retrieval recall by hand; loaders on the generated folders."""

from __future__ import annotations

import json

import pytest
import torch

from eval.clip.zeroshot import (
    class_embeddings,
    evaluate_classification,
    load_classification,
    load_retrieval,
    retrieval_recall,
    topk_accuracy,
)
from eval.config import DatasetConfig
from genhancer.runtime.errors import UserError


def test_topk_by_hand_with_a_tie():
    logits = torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    labels = [0, 1, 1]
    # row 0 right; row 1 ties with class 0 (counts against it); row 2 second
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc == pytest.approx({"top1": 100 / 3, "top2": 100.0})  # top5 > 3 classes: skipped


def test_retrieval_recall_by_hand():
    sims = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3, 0.2],
            [0.2, 0.8, 0.4, 0.1, 0.0],
            [0.1, 0.2, 0.3, 0.7, 0.6],
        ]
    )
    owner = [0, 0, 1, 2, 2]
    r = retrieval_recall(sims, owner, ks=(1, 2, 3))
    # i2t: image 0 best caption c0 rank 0; image 1's c2 rank 1 (c1 above); image 2's c3 rank 0
    assert r["i2t_R@1"] == pytest.approx(200 / 3)
    assert r["i2t_R@2"] == r["i2t_R@3"] == 100.0
    # t2i ranks per caption: c0 0, c1 2, c2 1, c3 0, c4 0
    assert r["t2i_R@1"] == pytest.approx(60.0)
    assert r["t2i_R@2"] == pytest.approx(80.0)
    assert r["t2i_R@3"] == 100.0


def test_retrieval_ties_count_against_the_model():
    sims = torch.tensor([[0.5, 0.1], [0.5, 0.9]])
    r = retrieval_recall(sims, [0, 1], ks=(1,))
    assert r["t2i_R@1"] == 50.0  # caption 0 ties between both images
    assert r["i2t_R@1"] == 100.0


def test_class_embedding_is_the_normalised_template_mean(fake_encoder):
    vecs = {"a x": [1.0, 0.0], "b x": [0.0, 2.0], "a y": [3.0, 0.0], "b y": [3.0, 0.0]}
    enc = fake_encoder(lambda im: [0.0, 0.0], lambda t: vecs[t])
    emb = class_embeddings(enc, ["x", "y"], ["a {}", "b {}"])
    s = 0.5**0.5
    assert torch.allclose(emb, torch.tensor([[s, s], [1.0, 0.0]], dtype=torch.float64))
    class_embeddings(enc, ["x", "y"], ["a {}", "b {}"])
    assert enc.text_calls == 4  # second call served from the text cache


def test_classification_on_the_toy_folder(toy_data_root, fake_encoder):
    from genhancer.toyworld.world import COLOR_RGB

    data = load_classification(DatasetConfig("toy_color", str(toy_data_root / "zeroshot" / "toy_color")))
    assert sorted(data.classnames) == sorted(COLOR_RGB) and len(data.images) == 18

    # An "encoder" that reads the dominant non-background colour: a right answer for every image.
    def image_vec(im):
        px = [p for p in im.convert("RGB").getdata() if max(p) - min(p) > 60]
        mean = [sum(c[i] for c in px) / len(px) for i in range(3)]
        return [-sum((m - c) ** 2 for m, c in zip(mean, COLOR_RGB[name])) / 1e4 for name in data.classnames]

    def text_vec(text):
        return [1.0 if name in text.split() else 0.0 for name in data.classnames]

    enc = fake_encoder(image_vec, text_vec)
    enc.logits = lambda img, cls: img.double() @ torch.eye(len(data.classnames), dtype=torch.float64)
    acc = evaluate_classification(enc, data, ["{} circle"])
    assert acc["top1"] == 100.0


def test_retrieval_folder_and_limit(toy_data_root):
    data = load_retrieval(DatasetConfig("toy_captions", str(toy_data_root / "zeroshot" / "toy_captions")))
    assert len(data.images) == 6 and len(data.captions) == 18
    assert data.caption_image[:4] == [0, 0, 0, 1]
    captions = DatasetConfig("t", str(toy_data_root / "zeroshot" / "toy_captions"))
    assert len(load_retrieval(captions, limit=2).images) == 2


def test_bad_folders_name_the_path(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        load_classification(DatasetConfig("x", str(tmp_path / "nope")))
    with pytest.raises(UserError, match="captions.jsonl not found"):
        load_retrieval(DatasetConfig("x", str(tmp_path)))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": "gone.jpg", "captions": ["a"]}) + "\n")
    with pytest.raises(UserError, match="gone.jpg"):
        load_retrieval(DatasetConfig("x", str(tmp_path)))
