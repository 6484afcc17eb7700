"""The demo in a real headless browser: Debian's Chromium driven by Playwright.

The app runs in-process on tiny models on a free loopback port. Tests upload two images and a
statement and read both models' scores off the page, hold a two-turn chat and wait for both
streamed answers of each turn, then clear it, and save a screenshot of every tab to ``docs/screenshots/<tab>.png`` (linked
from the README) and to the pytest temp folder.

Chromium comes from the system packages (``apt-get install chromium``); a browser that
downloads its own build cannot be fetched here. Without Chromium these tests skip, unless
``GENHANCER_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def _unavailable(reason: str):
    if os.environ.get("GENHANCER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GENHANCER_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_chromium()
    if executable is None:
        _unavailable("no Chromium on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install -e '.[dev]')")
    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as p:
        # a fresh profile per run (Playwright passes it to Chromium as --user-data-dir)
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    from eval.report import plot_mmvp_patterns, render_markdown

    out = tmp_path_factory.mktemp("board")
    records = [
        {
            "model": m,
            "benchmark": "mmvp_vlm",
            "metric": k,
            "value": v,
            "dataset": "toy",
            "revision": "sha256:0",
        }
        for m, base in (("original", 22.2), ("enhanced", 33.3))
        for k, v in (("orientation", base), ("color", base + 10), ("average", base + 5))
    ]
    (out / "leaderboard.md").write_text(render_markdown(records))
    plot_mmvp_patterns(records, out / "mmvp_vlm_patterns.png")
    return out


@pytest.fixture(scope="module")
def app_url(demo_cfg, results_dir, toy_gallery):
    """URL of the demo on tiny models, served in-process on 127.0.0.1; the app is ``app_url.app``."""
    from demo.app import build_app, launch

    cfg = demo_cfg(port=free_port(), results=str(results_dir))
    app = build_app(cfg, gallery=toy_gallery)
    launch(app, cfg, block=False, quiet=True)
    url = f"http://{cfg.host}:{cfg.port}/"
    try:
        yield url, app
    finally:
        app.close()


def _page(browser, url):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#compare").wait_for()
    return page


def _upload(page, target: str, path: str) -> None:
    page.locator(f"#{target} input[type=file]").set_input_files(path)
    page.locator(f"#{target} img").first.wait_for()


def _shoot(page, tab: str, artefacts: Path) -> None:
    """Always a test artefact; the README's copies in docs/screenshots are refreshed only with
    GENHANCER_UPDATE_SCREENSHOTS=1, so a test run leaves the working tree clean."""
    page.screenshot(path=str(artefacts / f"{tab}.png"), full_page=True)
    if os.environ.get("GENHANCER_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artefacts / f"{tab}.png", SCREENSHOTS / f"{tab}.png")


def _open_tab(page, title: str) -> None:
    page.get_by_role("tab", name=title).click()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def test_pair_test_shows_both_models_scores(browser, app_url, artefacts):
    url, app = app_url
    pair = app.gallery.examples[5]  # colour: two images that differ in one attribute
    page = _page(browser, url)
    _upload(page, "image-a", pair.image_a)
    _upload(page, "image-b", pair.image_b)
    page.locator("#statement-1 textarea").fill(pair.statement_a)
    page.locator("#truth-1").get_by_label("image A").check()
    page.locator("#statement-2 textarea").fill(pair.statement_b)
    page.locator("#truth-2").get_by_label("image B").check()
    page.locator("#compare").click()
    result = page.locator("#pair-result")
    for side in ("original", "enhanced"):
        result.locator(f".gh-model[data-side={side}] .gh-statement").first.wait_for()
    text = result.inner_text()
    assert "Original" in text and "Enhanced" in text and pair.statement_a in text
    # the page shows the numbers score_pair computes
    from demo.pair_test import score_pair

    statements = [pair.statement_a, pair.statement_b]
    expected = score_pair(app.registry, pair.image_a, pair.image_b, statements, ["image A", "image B"])
    for m in expected.models:
        block = result.locator(f".gh-model[data-side={m.side}]")
        rows = block.locator(".gh-statement")
        assert rows.count() == 2
        for i, st in enumerate(m.statements):
            row = rows.nth(i).inner_text()
            assert f"{100 * st.probs[0]:.1f}%" in row and f"{st.logits[1]:.2f}" in row
            assert ("right" if st.correct else "wrong") in row
            assert rows.nth(i).get_attribute("class").endswith("gh-right" if st.correct else "gh-wrong")
    _shoot(page, "pair", artefacts)
    page.close()


def test_gallery_fills_the_form_in_one_click(browser, app_url, artefacts):
    url, app = app_url
    page = _page(browser, url)
    first = app.gallery.examples[0]
    page.get_by_text(re.compile(f"^{first.pattern}: ")).first.click()  # labels are cut short on screen
    page.wait_for_function(
        "s => document.querySelector('#statement-1 textarea').value === s", arg=first.statement_a
    )
    assert page.locator("#statement-2 textarea").input_value() == first.statement_b
    page.locator("#image-a img").first.wait_for()
    page.close()


def test_heatmap_and_reconstruction_tabs(browser, app_url, artefacts):
    url, app = app_url
    example = app.gallery.examples[0]
    page = _page(browser, url)
    _open_tab(page, "Where each model looks")
    _upload(page, "hm-image", example.image_a)
    page.locator("#hm-statement textarea").fill(example.statement_a)
    page.locator("#hm-go").click()
    for side in ("original", "enhanced"):
        page.locator(f"#hm-{side} img").first.wait_for()
    assert "score (logit)" in page.locator("#hm-original").inner_text()
    _shoot(page, "heatmap", artefacts)

    _open_tab(page, "What the global token keeps")
    _upload(page, "rec-image", example.image_a)
    page.locator("#rec-go").click()
    for side in ("original", "enhanced"):
        page.locator(f"#rec-{side} img").first.wait_for()
    _shoot(page, "reconstruction", artefacts)
    page.close()


def _bot_texts(page, side: str) -> list[str]:
    return page.locator(f"#chat-{side} [data-testid=bot]").all_inner_texts()


def _plain(text: str) -> str:
    """Letters and digits only: the panel renders answers as Markdown (tiny models emit noise)."""
    return re.sub(r"[^0-9A-Za-z]", "", text)


def _wait_for_answers(page, expected: dict[str, list[str]]) -> None:
    """Until each side's panel shows exactly ``expected[side]`` as its answers (streaming done)."""
    want = {s: [_plain(a) for a in answers] for s, answers in expected.items()}
    for _ in range(TIMEOUT_MS // 250):
        got = {s: [_plain(t) for t in _bot_texts(page, s)] for s in expected}
        if got == want:
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"chat panels show {got}, expected {want}")


def test_chat_keeps_a_conversation_per_side_and_clears(browser, app_url, artefacts):
    from PIL import Image

    from demo.chat import EMPTY, stream_answer

    url, app = app_url
    image_path = app.gallery.examples[5].image_a
    image = Image.open(image_path).convert("RGB")
    n = app.registry.cfg.max_new_tokens
    page = _page(browser, url)
    _open_tab(page, "Chat")
    _upload(page, "chat-image", image_path)
    first, follow_up = "What color are the shapes?", "What shape are they?"
    page.locator("#question textarea").fill(first)
    page.locator("#ask").click()
    answers = {
        s: [list(stream_answer(app.registry.llava(s), image, first, n))[-1] or EMPTY]
        for s in ("original", "enhanced")
    }
    _wait_for_answers(page, answers)
    assert page.locator("#question textarea").input_value() == ""  # asked: the box is free again

    # the second answer comes after the side's own first exchange (an empty answer is not history)
    page.locator("#question textarea").fill(follow_up)
    page.locator("#ask").click()
    for side, said in answers.items():
        history = [(first, said[0])] if said[0] != EMPTY else []
        runner = app.registry.llava(side)
        said.append(list(stream_answer(runner, image, follow_up, n, history))[-1] or EMPTY)
    _wait_for_answers(page, answers)
    for side in answers:
        assert page.locator(f"#chat-{side} [data-testid=user]").all_inner_texts() == [first, follow_up]
    _shoot(page, "chat", artefacts)

    page.locator("#chat-clear").click()
    _wait_for_answers(page, {"original": [], "enhanced": []})
    assert page.locator("#chat-original [data-testid=user]").count() == 0
    page.close()


def test_leaderboard_tab(browser, app_url, artefacts):
    url, _ = app_url
    page = _page(browser, url)
    _open_tab(page, "Leaderboard")
    md = page.locator("#leaderboard-md")
    md.get_by_text("enhanced").first.wait_for()
    assert "33.3" in md.inner_text()
    page.locator("#leaderboard-plots img").first.wait_for()
    _shoot(page, "leaderboard", artefacts)
    page.close()


def test_missing_browser_fails_when_ci_requires_it(monkeypatch):
    monkeypatch.setenv("GENHANCER_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="GENHANCER_REQUIRE_BROWSER=1 but no Chromium"):
        _unavailable("no Chromium")
    monkeypatch.delenv("GENHANCER_REQUIRE_BROWSER")
    with pytest.raises(pytest.skip.Exception):
        _unavailable("no Chromium")
