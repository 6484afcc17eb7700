"""MMVP per visual pattern: the pair-to-pattern map (read, written, derived from MMVP-VLM by
image on the fixtures in the real schemas) and the per-pattern pair accuracy."""

from __future__ import annotations

import csv
import io
import random

import pytest

from eval.clip.mmvp_vlm import CSV_COLUMNS, CSV_NAME, IMAGE_DIR, PATTERNS, load_mmvp_vlm
from eval.mllm.fixtures import MllmFixtureRecipe, write_mmvp
from eval.mllm.mmvp_patterns import (
    PATTERN_FILE,
    derive_pattern_map,
    load_mmvp_images,
    main,
    read_pattern_map,
    write_pattern_map,
)
from eval.mllm.scoring import Sample, score_mmvp
from genhancer.runtime.errors import UserError


def _mmvp(index: int, answer: str, reply: str) -> Sample:
    return Sample(index - 1, reply, {"Index": index, "Options": "(a) x (b) y", "Correct Answer": answer})


def test_per_pattern_pair_accuracy_by_hand():
    # pairs 0, 1 colour (both right, one wrong); pair 2 quantity (right); pair 3 not in the map
    samples = [
        _mmvp(1, "(a)", "A"),
        _mmvp(2, "(b)", "B"),
        _mmvp(3, "(a)", "A"),
        _mmvp(4, "(b)", "A"),
        _mmvp(5, "(a)", "A"),
        _mmvp(6, "(b)", "B"),
        _mmvp(7, "(a)", "B"),
        _mmvp(8, "(b)", "B"),
    ]
    sc = score_mmvp(samples, patterns={0: "color", 1: "color", 2: "quantity"})
    m = sc.metrics
    assert m["pattern/color"] == 50.0 and m["pattern/quantity"] == 100.0 and m["pattern/unmapped"] == 0.0
    assert m["pair_accuracy"] == 50.0  # unchanged by the map
    assert sc.items["pattern/color"].ids == [0, 1] and sc.items["pattern/color"].unit == "pair"
    assert not any(k.startswith("pattern/") for k in score_mmvp(samples).metrics)  # no map: no table


def test_pattern_map_round_trip_and_bad_files(tmp_path):
    path = write_pattern_map(tmp_path / PATTERN_FILE, {0: "color", 2: "viewpoint"}, 3)
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["Index", "pattern"] and rows[1:3] == [["1", "color"], ["2", "color"]]
    assert read_pattern_map(path) == {0: "color", 1: "unmapped", 2: "viewpoint"}
    # the MMVP-VLM Type names are accepted too
    (tmp_path / "types.csv").write_text("Index,pattern\n1,Color and Appearance\n2,Color and Appearance\n")
    assert read_pattern_map(tmp_path / "types.csv") == {0: "color"}
    (tmp_path / "bad.csv").write_text("Index,pattern\n1,color\n2,state\n")
    with pytest.raises(UserError, match="pair 0 given two patterns"):
        read_pattern_map(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("Index,pattern\n1,smell\n")
    with pytest.raises(UserError, match="unknown pattern 'smell'"):
        read_pattern_map(tmp_path / "bad2.csv")
    with pytest.raises(UserError, match="not found"):
        read_pattern_map(tmp_path / "missing.csv")


def _jpeg(image, size: int) -> bytes:
    buf = io.BytesIO()
    image.resize((size, size)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def test_map_derived_from_mmvp_vlm_by_image_recovers_the_patterns(tmp_path):
    """MMVP fixture in lmms-lab-eval/MMVP's schema; an MMVP-VLM copy in the published layout made
    from 6 of its 9 pairs (re-encoded, resized, reordered, renumbered): the derived map gives those 6
    their pattern and leaves the other 3 unmapped."""
    recipe = MllmFixtureRecipe(image_size=48, mmvp_pairs=9)
    write_mmvp(tmp_path, recipe)
    truth = read_pattern_map(tmp_path / "mmvp" / PATTERN_FILE)  # what the fixture varied per pair
    images = load_mmvp_images(tmp_path / "mmvp")
    assert sorted(images) == list(range(1, 19))
    kept = {"color": [3, 0], "quantity": [4, 1], "position": [5, 2]}  # pairs 6, 7, 8 left out
    title = dict(PATTERNS)
    vlm = tmp_path / "mmvp_vlm"
    rows, qid = [], 1
    for key in ("position", "color", "quantity"):  # another pattern order than MMVP's pairs
        folder = vlm / IMAGE_DIR / title[key]
        folder.mkdir(parents=True)
        for pair in kept[key]:
            first, second = (
                (2 * pair + 1, 2 * pair + 2)
                if random.Random(pair).random() < 0.5
                else (2 * pair + 2, 2 * pair + 1)
            )
            for index in (first, second):
                (folder / f"{qid}.jpg").write_bytes(_jpeg(images[index], 64))
                rows.append((qid, title[key], f"statement {qid}"))
                qid += 1
    with open(vlm / CSV_NAME, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows(rows)
    derived = derive_pattern_map(images, load_mmvp_vlm(vlm, pairs_per_pattern=2))
    assert derived == {p: truth[p] for ps in kept.values() for p in ps}
    assert set(truth) - set(derived) == {6, 7, 8}
    out = tmp_path / "derived.csv"
    assert main(["--mmvp", str(tmp_path / "mmvp"), "--mmvp-vlm", str(vlm), "--out", str(out)]) == 0
    got = read_pattern_map(out)
    assert {p: k for p, k in got.items() if k != "unmapped"} == derived and got[6] == "unmapped"
