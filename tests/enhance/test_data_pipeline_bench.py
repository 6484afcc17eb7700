"""bench/data_pipeline.py at tiny size: its shards are what the webdataset library reads as
img2dataset output, its JSON is LLaVA's schema, and it reports a rate and a worker count for each
resolution."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "data_pipeline.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_data_pipeline", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_shards_read_back_in_webdataset(tmp_path):
    """The shards load in the webdataset library itself (the format's owner): jpg + txt + json
    per key, images decode, short side 300-500 px."""
    import webdataset as wds

    mod = _load()
    made = mod.write_shards(tmp_path / "shards", 12, shard_size=5)
    assert made["images"] == 12 and sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "00000.tar",
        "00001.tar",
        "00002.tar",
    ]
    urls = [str(p) for p in sorted((tmp_path / "shards").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 12
    for s in samples:
        assert {"jpg", "txt", "json"} <= set(s) and s["json"]["key"] == s["__key__"]
        assert (
            300 <= min(s["jpg"].size) <= 500
            and 3 / 4 - 0.01 <= s["jpg"].width / s["jpg"].height <= 16 / 9 + 0.01
        )


def test_generated_llava_json_is_the_published_schema(tmp_path):
    from llava_integration.data import RowReport, load_records

    mod = _load()
    path = tmp_path / "mix.json"
    assert mod.write_mix665k(path, 300)["rows"] == 300
    report = RowReport()
    records = load_records(path, 576, report)
    assert report.rows == report.kept == len(records) == 300 and not report.skipped
    text_only = sum(r.image is None for r in records)
    assert 0 < text_only < 60  # ~6 % text-only rows, the rest one image each


@pytest.mark.slow
def test_image_bench_reports_rates_and_workers(tmp_path):
    mod = _load()
    result = mod.bench_images(16, tmp_path)
    rows = result["per_worker"]
    assert [r["resolution"] for r in rows] == [224, 336, 384]
    for r in rows:
        assert r["both_views_img_s"] > 0 and r["latent_cache_img_s"] > 0
        assert r["workers_for_100"]["both_views"] == math.ceil(100 / r["both_views_img_s"])
        shares = [p["share"] for p in r["phases_both_views"].values()]
        assert abs(sum(shares) - 1) < 0.01
    assert json.loads(json.dumps(result)) == result
