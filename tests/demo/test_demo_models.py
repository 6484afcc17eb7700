"""The model registry: lazy, load-once (also under concurrent requests), one-line messages."""

from __future__ import annotations

import threading
import time

import pytest

from demo.config import load_config
from demo.models import ModelRegistry, Unavailable, best_device, find_denoiser_dir, run_cache_dir


def _counting(cfg, delay: float = 0.0):
    calls: list[str] = []

    def encoder(spec, device, cache_dir):
        calls.append(spec)
        time.sleep(delay)
        return f"model<{spec}>"

    return ModelRegistry(cfg, loaders={"encoder": encoder}), calls


def test_nothing_loads_until_used_and_each_model_loads_once():
    reg, calls = _counting(load_config(flags={"original": "a", "enhanced": "b"}))
    assert calls == []
    assert [state for _, _, state in reg.status()][:2] == ["loads on first use"] * 2
    assert reg.encoder("original") == "model<a>"
    assert reg.encoder("original") == "model<a>"
    assert calls == ["a"]
    assert reg.status()[0][2] == "loaded"


def test_concurrent_first_requests_share_one_load():
    reg, calls = _counting(load_config(flags={"original": "a"}), delay=0.2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(reg.encoder("original"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["a"] and results == ["model<a>"] * 4


def test_missing_models_name_the_flag():
    reg = ModelRegistry(load_config())
    with pytest.raises(Unavailable, match="--original"):
        reg.encoder("original")
    with pytest.raises(Unavailable, match="--llava-enhanced"):
        reg.llava("enhanced")
    with pytest.raises(Unavailable, match="--enhanced RUN_DIR"):
        reg.reconstructor()
    assert not reg.has_chat()
    assert [state for _, _, state in reg.status()] == ["not given"] * 5


def test_a_failed_load_is_a_message_and_is_remembered(tmp_path):
    calls = []

    def broken(spec, device, cache_dir):
        calls.append(spec)
        raise RuntimeError("weights are corrupt\nlong detail")

    reg = ModelRegistry(load_config(flags={"original": "x"}), loaders={"encoder": broken})
    for _ in range(2):
        with pytest.raises(Unavailable, match="^RuntimeError: weights are corrupt$"):
            reg.encoder("original")
    assert calls == ["x"]
    assert reg.status()[0][2].startswith("failed: RuntimeError")


def test_real_loader_reports_a_wrong_path(tmp_path):
    reg = ModelRegistry(load_config(flags={"enhanced": str(tmp_path / "missing"), "device": "cpu"}))
    with pytest.raises(Unavailable, match="Enhanced encoder .*model path not found"):
        reg.encoder("enhanced")
    reg = ModelRegistry(load_config(flags={"llava_original": str(tmp_path / "nope")}))
    with pytest.raises(Unavailable, match="folder not found"):
        reg.llava("original")
    (tmp_path / "empty").mkdir()
    reg = ModelRegistry(load_config(flags={"llava_original": str(tmp_path / "empty"), "device": "cpu"}))
    with pytest.raises(Unavailable, match="no config.json"):
        reg.llava("original")


def test_denoiser_dir_is_found_from_any_part_of_a_run(demo_run):
    den = demo_run / "export" / "denoiser"
    for given in (demo_run, demo_run / "export", demo_run / "export" / "hf", den):
        assert find_denoiser_dir(str(given)) == den
    assert find_denoiser_dir("") is None
    assert find_denoiser_dir(str(demo_run / "nowhere")) is None
    assert run_cache_dir(den) is not None  # the tiny run records its cache dir
    cfg = load_config(flags={"enhanced": str(demo_run / "export" / "hf"), "cache_dir": "/elsewhere"})
    assert ModelRegistry(cfg).cache_dir == "/elsewhere"


def test_best_device():
    assert best_device("cpu") == "cpu"
    assert best_device("auto") in ("cuda", "mps", "cpu")
