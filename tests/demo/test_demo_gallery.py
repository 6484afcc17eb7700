"""Gallery: toy-world pairs by default, the real MMVP-VLM layout when ``--data-root`` has it."""

from __future__ import annotations

from pathlib import Path

from demo.gallery import load_gallery
from eval.clip.fixtures import write_toy_mmvp_vlm
from eval.clip.mmvp_vlm import PATTERN_KEYS


def test_toy_gallery_has_one_pair_per_pattern_first(toy_gallery):
    assert toy_gallery.source.startswith("toy-world")
    assert [e.pattern for e in toy_gallery.examples] == list(PATTERN_KEYS)
    for e in toy_gallery.examples:
        assert Path(e.image_a).is_file() and Path(e.image_b).is_file()
        assert e.statement_a != e.statement_b
        assert e.row()[4:] == ["image A", "image B"]  # statement 1 <-> image A, as in MMVP-VLM
        assert Path(e.image_a).is_relative_to(toy_gallery.root)


def test_size_goes_round_robin_over_patterns(tmp_path):
    g = load_gallery("", 12, toy_dir=tmp_path / "toy")
    patterns = [e.pattern for e in g.examples]
    assert patterns[:9] == list(PATTERN_KEYS) and patterns[9:] == list(PATTERN_KEYS[:3])
    assert len({e.image_a for e in g.examples}) == 12


def test_real_benchmark_is_used_when_on_disk(tmp_path):
    # the published layout (here filled with toy images) under DATA_ROOT/mmvp_vlm
    write_toy_mmvp_vlm(
        tmp_path / "data" / "mmvp_vlm", seed=5, pairs_per_pattern=15, patterns=("color", "text")
    )
    g = load_gallery(str(tmp_path / "data"), 4)
    assert g.source.startswith("MMVP-VLM from")
    assert [e.pattern for e in g.examples] == ["color", "text", "color", "text"]


def test_missing_or_broken_benchmark_falls_back_to_toy(tmp_path):
    g = load_gallery(str(tmp_path / "nothing"), 3, toy_dir=tmp_path / "toy")
    assert g.source.startswith("toy-world") and "no MMVP-VLM under" in g.source
    broken = tmp_path / "broken" / "mmvp_vlm"
    broken.mkdir(parents=True)
    (broken / "Questions.csv").write_text("wrong,header\n")
    g = load_gallery(str(tmp_path / "broken"), 3, toy_dir=tmp_path / "toy")
    assert g.source.startswith("toy-world") and "columns are" in g.source


def test_default_toy_set_is_written_once_and_reused():
    first = load_gallery("", 2)
    again = load_gallery("", 2)
    assert first.root == again.root and (first.root / "Questions.csv").is_file()
    assert [e.image_a for e in first.examples] == [e.image_a for e in again.examples]
