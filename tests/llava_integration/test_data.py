"""LLaVA JSON data: validation errors, pad-to-square, skipped images, truncation, grouping, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genhancer.runtime.errors import UserError
from llava_integration.data import (
    LlavaStream,
    RowReport,
    encode,
    epoch_order,
    load_records,
    parse_records,
)
from llava_integration.model import build_image_processor, num_image_tokens
from llava_integration.templates import IGNORE_INDEX, TEMPLATES, render


def _conv(q="<image>\nWhat color?", a="red"):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.mark.parametrize(
    "sample, reason",
    [
        ({"id": "s1", "image": "a.jpg"}, "no_conversations"),
        ({"id": "s2", "conversations": _conv()}, "image_token_without_image"),
        ({"id": "s3", "image": "../etc/a.jpg", "conversations": _conv()}, "image_path_outside_root"),
        ({"id": "s4", "image": "/abs/a.jpg", "conversations": _conv()}, "image_path_outside_root"),
        ({"id": "s5", "image": "a.jpg", "conversations": _conv("<image> <image>")}, "several_image_tokens"),
        ({"id": "s6", "conversations": [{"from": "gpt", "value": "x"}]}, "no_answer"),
        (
            {"id": "s7", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
            "bad_turn",
        ),
        (
            {"id": "s8", "conversations": [*_conv("a", "b"), *_conv("c", "d")[1:], *_conv("e", "f")]},
            "roles_out_of_order",
        ),
        ({"id": "s9", "image": ["a.jpg", "b.jpg"], "conversations": _conv()}, "image_not_a_string"),
        ("not a row", "not_an_object"),
    ],
)
def test_broken_rows_are_skipped_and_counted_by_reason(sample, reason):
    good = {"id": "ok", "conversations": _conv("Is red a color?", "Yes")}
    report = RowReport()
    records = parse_records([good, sample], "data.json", report=report)
    assert [r.id for r in records] == ["ok"]
    assert report.as_dict() == {"rows": 2, "kept": 1, "tolerated": {}, "skipped": {reason: 1}}
    with pytest.raises(UserError, match=f"data.json: no usable sample .*{reason}"):
        parse_records([sample], "data.json")


def test_rows_llava_tolerates_are_repaired_and_counted():
    rows = [
        {"id": "g", "conversations": [{"from": "gpt", "value": "Hi!"}, *_conv("Is red a color?", "Yes")]},
        {
            "id": "h",
            "conversations": [*_conv("Is red a color?", "Yes"), {"from": "human", "value": "Thanks"}],
        },
        {"id": "i", "image": "a.jpg", "conversations": _conv("What color?", "red")},
    ]
    report = RowReport()
    g, h, i = parse_records(rows, "data.json", report=report)
    assert [t.role for t in g.turns] == ["human", "gpt"] and g.turns[0].text == "Is red a color?"
    assert [t.role for t in h.turns] == ["human", "gpt"]
    assert i.turns[0].text == "<image>\nWhat color?"
    assert report.as_dict() == {
        "rows": 3,
        "kept": 3,
        "tolerated": {
            "image_token_added": 1,
            "leading_gpt_turn_dropped": 1,
            "trailing_human_turn_dropped": 1,
        },
        "skipped": {},
    }


def test_image_without_token_gets_it_first():
    (r,) = parse_records([{"id": "x", "image": "sub/../a.jpg", "conversations": _conv("What?")}], "d")
    assert r.turns[0].text == "<image>\nWhat?" and r.image == "a.jpg"


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_records(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_records(tmp_path / "bad.json")


def test_pad_to_square_uses_the_processor_mean():
    from transformers import CLIPImageProcessor

    ip = build_image_processor(
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), pad=True
    )
    wide = Image.new("RGB", (64, 32), (255, 0, 0))  # padded to 64x64: 16 rows of mean on top and bottom
    pv = ip([wide], return_tensors="pt")["pixel_values"][0]
    mean, std = np.array(ip.image_mean), np.array(ip.image_std)
    pad_value = (np.array([int(m * 255) for m in mean]) / 255 - mean) / std  # LLaVA: int(mean * 255)
    top = pv[:, 1, :].numpy()
    assert np.allclose(top, pad_value[:, None], atol=0.03)
    red = (np.array([1.0, 0.0, 0.0]) - mean) / std
    assert np.allclose(pv[:, 16, 16].numpy(), red, atol=0.03)
    unpadded = build_image_processor(ip, pad=False)([wide], return_tensors="pt")["pixel_values"][0]
    assert np.allclose(unpadded[:, 1, 16].numpy(), red, atol=0.03)  # resize+crop: no mean band


@pytest.mark.parametrize("pad", [True, False], ids=["pad", "crop"])
def test_pixels_equal_llavas_pil_pipeline(pad):
    """LLaVA-1.5 reads images with PIL: ``expand2square`` (background ``int(mean * 255)``, image
    pasted at the centre), then ``CLIPImageProcessor``: PIL bicubic resize of the short side,
    centre crop, ``* 1/255``, ``(x - mean) / std`` in float32. Written out here with PIL and numpy;
    transformers' torchvision resize differs from it by 1/255 on some pixels of this image."""
    from transformers import CLIPImageProcessor, LlavaImageProcessor

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))  # 70 wide, 45 high
    tower = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ip = build_image_processor(tower, pad=pad)
    got = ip([image], return_tensors="pt")["pixel_values"][0].numpy()

    mean, std = np.array(tower.image_mean, np.float32), np.array(tower.image_std, np.float32)
    im = image
    if pad:
        im = Image.new("RGB", (70, 70), tuple(int(m * 255) for m in tower.image_mean))
        im.paste(image, (0, (70 - 45) // 2))
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(32 * long / short)
    im = im.resize((32, new_long) if w <= h else (new_long, 32), Image.Resampling.BICUBIC)
    left, top = (im.size[0] - 32) // 2, (im.size[1] - 32) // 2
    x = np.asarray(im.crop((left, top, left + 32, top + 32)))
    want = (((x * (1 / 255)).astype(np.float32) - mean) / std).transpose(2, 0, 1)
    assert np.allclose(got, want, rtol=0, atol=1e-6)

    kwargs = {
        k: getattr(ip, k) for k in ("size", "crop_size", "image_mean", "image_std", "do_pad", "resample")
    }
    torchvision = LlavaImageProcessor(**kwargs)([image], return_tensors="pt")["pixel_values"][0].numpy()
    assert np.abs(torchvision - want).max() > 0.9 / 255 / std.max()  # this image tells the two apart


def _stream(records, root, tiny_llava, **kw):
    model, proc = tiny_llava
    args = dict(max_length=256, batch_size=4, seed=0)
    args.update(kw)
    return LlavaStream(
        records,
        root,
        proc.tokenizer,
        proc.image_processor,
        TEMPLATES["vicuna_v1"],
        model.config.image_token_id,
        num_image_tokens(model.config),
        **args,
    )


def test_encode_expands_image_and_counts_truncation(tiny_llava):
    model, proc = tiny_llava
    (r,) = parse_records([{"id": "a", "image": "x.jpg", "conversations": _conv(a="two red circles")}], "d")
    n = num_image_tokens(model.config)
    assert n == 16
    img_id = model.config.image_token_id
    enc = encode(r, proc.tokenizer, TEMPLATES["vicuna_v1"], img_id, n, 512)
    assert enc.input_ids.count(img_id) == n and not enc.truncated
    assert all(lab == IGNORE_INDEX for i, lab in zip(enc.input_ids, enc.labels) if i == img_id)
    cut = encode(r, proc.tokenizer, TEMPLATES["vicuna_v1"], img_id, n, len(enc.input_ids) - 1)
    assert cut.truncated and len(cut.input_ids) == len(enc.input_ids) - 1
    assert encode(r, proc.tokenizer, TEMPLATES["vicuna_v1"], img_id, n, 40) is None  # image cut: dropped


def test_broken_and_missing_images_are_skipped_and_counted(tmp_path, tiny_llava):
    Image.new("RGB", (20, 30), "blue").save(tmp_path / "ok.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    samples = [
        {"id": "ok", "image": "ok.jpg", "conversations": _conv()},
        {"id": "broken", "image": "broken.jpg", "conversations": _conv()},
        {"id": "missing", "image": "missing.jpg", "conversations": _conv()},
        {"id": "text", "conversations": _conv("Is red a color?", "yes")},
    ]
    records = parse_records(samples, "d", 16)
    batch = _stream(records, tmp_path, tiny_llava).collate(records)
    assert batch["skipped"] == 2 and batch["num_samples"] == 2
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert batch["input_ids"].shape[0] == 2


def test_grouping_keeps_modalities_apart(toy_data):
    records = load_records(toy_data / "finetune.json", 16)
    assert any(r.image is None for r in records) and any(r.image for r in records)
    order = epoch_order(records, seed=0, epoch=0, group=4, by_modality=True)
    assert sorted(order) == list(range(len(records)))
    full = len(order) - (
        sum(r.image is None for r in records) % 4 + sum(r.image is not None for r in records) % 4
    )
    for s in range(0, full, 4):
        kinds = {records[i].image is None for i in order[s : s + 4]}
        assert len(kinds) == 1
        lengths = [records[i].length for i in order[s : s + 4]]
        assert lengths == sorted(lengths, reverse=True)
    assert order != epoch_order(records, seed=0, epoch=1, group=4, by_modality=True)


def test_stream_resumes_at_a_position(toy_data, tiny_llava):
    records = load_records(toy_data / "finetune.json", 16)
    first = iter(_stream(records, toy_data, tiny_llava, world_size=2, rank=1))
    batches = [next(first) for _ in range(14)]  # > one epoch for this rank (40 samples / 4 / 2)
    position = batches[5]["position"]
    again = iter(_stream(records, toy_data, tiny_llava, world_size=2, rank=1, start=position))
    for want in batches[6:10]:
        got = next(again)
        assert got["position"] == want["position"]
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["pixel_values"], want["pixel_values"])


def test_ranks_see_disjoint_samples(toy_data, tiny_llava):
    records = load_records(toy_data / "finetune.json", 16)
    seen = []
    for rank in (0, 1):
        it = iter(_stream(records, toy_data, tiny_llava, world_size=2, rank=rank))
        seen.append([next(it)["input_ids"] for _ in range(2)])
    assert not torch.equal(seen[0][0], seen[1][0])


def test_toy_json_is_llava_format(toy_data):
    for name in ("pretrain", "finetune"):
        data = json.loads((toy_data / f"{name}.json").read_text())
        for s in data:
            assert set(s) <= {"id", "image", "conversations"}
            if "image" in s:
                assert (toy_data / s["image"]).is_file()
                assert Path(s["image"]).parts[0] == "images"


def test_llava_release_layouts_load_with_tolerated_and_skipped_rows_counted(llava_layout):
    lcs = RowReport()
    records = load_records(llava_layout / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json", 16, lcs)
    assert lcs.as_dict() == {"rows": 8, "kept": 8, "tolerated": {}, "skipped": {}}
    assert all(r.image and (llava_layout / "LLaVA-Pretrain" / "images" / r.image).is_file() for r in records)
    plain, _ = render(TEMPLATES["plain"], records[0].turns)
    assert plain == "<image>select luxury furniture 3 - inch gel\n"  # LLaVA's plain: image, caption, newline

    mix = RowReport()
    records = load_records(llava_layout / "llava_v1_5_mix665k.json", 16, mix)
    assert mix.as_dict() == {
        "rows": 12,
        "kept": 10,
        "tolerated": {"leading_gpt_turn_dropped": 1},
        "skipped": {"bad_turn": 1, "image_token_without_image": 1},
    }
    assert mix.examples["bad_turn"] == ["broken_turn"]
    folders = {Path(r.image).parts[0] for r in records if r.image}
    assert folders == {"coco", "gqa", "ocr_vqa", "textvqa", "vg"}
    assert all((llava_layout / r.image).is_file() for r in records if r.image)
    assert sum(r.image is None for r in records) == 3
    spider = next(r for r in records if r.id == "sharegpt_gpt_first")
    assert [(t.role, t.text) for t in spider.turns] == [
        ("human", "How many legs does a spider have?"),
        ("gpt", "8"),
    ]
    vg = next(r for r in records if r.id == "VG_2411851")
    text, _ = render(TEMPLATES["vicuna_v1"], vg.turns)  # <image> moved first, as LLaVA does
    assert "USER: <image>\nWhat is the temperature shown on the sign? ASSISTANT: -5 degrees</s>" in text


def test_each_stage_reads_images_with_its_own_aspect_ratio():
    """LLaVA-1.5 pretrains on the processor's resize + centre crop and finetunes on pad-to-square."""
    from transformers import CLIPImageProcessor

    from llava_integration.config import LlavaTrainConfig
    from llava_integration.train import stage_image_processor

    base = build_image_processor(
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), pad=True
    )
    cfg = LlavaTrainConfig()
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    fine = stage_image_processor(base, cfg.finetune)([wide], return_tensors="pt")["pixel_values"][0]
    pre = stage_image_processor(base, cfg.pretrain)([wide], return_tensors="pt")["pixel_values"][0]
    red = (np.array([1.0, 0.0, 0.0]) - np.array(base.image_mean)) / np.array(base.image_std)
    assert np.allclose(pre[:, 1, 16].numpy(), red, atol=0.03)  # cropped: red to the top edge
    assert not np.allclose(fine[:, 1, 16].numpy(), red, atol=0.03)  # padded: a band of the mean colour
    assert base.do_pad  # the shared processor is left as it was
