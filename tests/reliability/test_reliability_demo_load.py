"""A bounded loopback load test of the demo's ``pair_test`` endpoint with the tiny models: 50
requests from 4 client threads against a real queued server on 127.0.0.1. Reports requests/s and
checks that every response equals the serial answer for its inputs."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from testkit import load_test_module

REQUESTS, THREADS = 50, 4


@pytest.fixture(scope="module")
def pair_app_cfg(tmp_model_dirs, tmp_path_factory):
    from enhance.train import run

    root = load_test_module("conftest.py", "_genhancer_tests_root_conftest")
    demo = load_test_module("demo/conftest.py", "_genhancer_tests_demo_conftest")
    run_dir = tmp_path_factory.mktemp("load_run") / "run"
    run(root.build_tiny_enhance_config(tmp_model_dirs, ["logging.preview_count=0"]), run_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return demo.make_demo_cfg(tmp_model_dirs, run_dir, None, port=port, concurrency=2, llava_enhanced="")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    from PIL import Image

    root = tmp_path_factory.mktemp("load_images")
    out = []
    for colour in ("red", "blue", "green"):
        p = root / f"{colour}.png"
        Image.new("RGB", (40, 40), colour).save(p)
        out.append(str(p))
    return out


@pytest.mark.slow
def test_pair_endpoint_under_concurrent_loopback_load(pair_app_cfg, images, capsys):
    from gradio_client import Client, handle_file

    from demo.app import _pair_handler, build_app, launch
    from demo.models import ModelRegistry

    cfg = pair_app_cfg
    cases = [
        (images[i % 3], images[(i + 1) % 3], "a red square", "a blue square", "image A", "not marked")
        for i in range(3)
    ]
    registry = ModelRegistry(cfg)
    handler = _pair_handler(registry)
    expected = [handler(*c) for c in cases]  # serial reference answers
    assert all("gh-error" not in e and "%" in e for e in expected), expected[0][:500]
    assert len(set(expected)) > 1  # different inputs, different answers

    app = build_app(cfg)
    try:
        _, url, _ = launch(app, cfg, block=False, quiet=True)
        assert url.startswith("http://127.0.0.1:")

        local = threading.local()

        def one(i: int) -> tuple[int, str]:
            if not hasattr(local, "client"):  # one client (connection) per thread
                local.client = Client(url, verbose=False)
            client = local.client
            a, b, *rest = cases[i % len(cases)]
            return i, client.predict(handle_file(a), handle_file(b), *rest, api_name="/pair_test")

        t0 = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(one, range(REQUESTS)))
        wall = time.monotonic() - t0
    finally:
        app.close()

    wrong = [i for i, html in answers if html != expected[i % len(cases)]]
    assert len(answers) == REQUESTS and not wrong, f"{len(wrong)} wrong responses: {wrong[:5]}"
    with capsys.disabled():
        print(f"\npair_test load: {REQUESTS} requests, {THREADS} threads, {REQUESTS / wall:.1f} req/s")
