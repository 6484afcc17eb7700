"""The page object: tabs, endpoints, handlers that never leak tracebacks, queue and bind settings."""

from __future__ import annotations

import socket

from demo.app import TABS, _pair_handler, build_app, launch, status_markdown
from demo.models import ModelRegistry


def test_page_has_every_tab_and_endpoint(demo_cfg, toy_gallery):
    app = build_app(demo_cfg(), gallery=toy_gallery)
    config = app.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {f"tab-{tab}" for tab, _ in TABS} <= ids
    assert {
        "compare",
        "pair-result",
        "hm-go",
        "rec-go",
        "ask",
        "chat-clear",
        "chat-original",
        "chat-enhanced",
    } <= ids
    assert "enhanced-variant" in ids  # the model picker (shown when the run has per-step exports)
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"pair_test", "heatmap", "reconstruct", "chat"} <= names


def test_unexpected_errors_become_page_messages(demo_cfg, monkeypatch, two_images):
    import demo.pair_test

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire\nTraceback (most recent call last): ...")

    monkeypatch.setattr(demo.pair_test, "score_pair", boom)
    page = _pair_handler(ModelRegistry(demo_cfg()))(*two_images, "x", "", "not marked", "not marked")
    assert "gh-message" in page and "RuntimeError: disk on fire" in page and "Traceback" not in page


def test_status_table_lists_every_model(demo_cfg):
    text = status_markdown(ModelRegistry(demo_cfg(llava_enhanced="")))
    assert (
        "Original encoder" in text and "Denoiser" in text and "| Enhanced LLaVA | `-` | not given |" in text
    )


def test_launch_binds_loopback_with_queue_and_upload_limits(demo_cfg, toy_gallery):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = demo_cfg(port=port, concurrency=3, max_upload_mb=2.5)
    app = build_app(cfg, gallery=toy_gallery)
    try:
        _, url, _ = launch(app, cfg, block=False, quiet=True)
        assert url.startswith(f"http://127.0.0.1:{port}")
        assert app.server_name == "127.0.0.1"
        assert app._queue.default_concurrency_limit == 3
        assert app.max_file_size == 2_500_000
    finally:
        app.close()
