"""The Gradio page: five tabs over the plain functions in ``demo/``.

Every button calls one function from a sibling module (:func:`demo.pair_test.score_pair`,
:func:`demo.heatmap.heatmap_views`, ...) through a thin handler here that only turns results
into component values, so the logic is tested without a browser. Any failure a handler did not
expect is shown as a one-line note in the page, never as a traceback.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from demo.common import FINAL, SIDES, TITLES
from demo.config import DemoConfig
from demo.gallery import Gallery, load_gallery
from demo.models import ModelRegistry
from demo.pair_test import TRUTH_CHOICES, message_html

log = logging.getLogger("demo")

#: Tab ids (also the screenshot names under docs/screenshots/).
TABS: tuple[tuple[str, str], ...] = (
    ("pair", "Pair test"),
    ("heatmap", "Where each model looks"),
    ("reconstruction", "What the global token keeps"),
    ("chat", "Chat"),
    ("leaderboard", "Leaderboard"),
)

#: What a tab says above its inputs.
INTROS = {
    "pair": (
        "Two images, one or two statements. For each statement, each model's softmax over the two "
        "images says which image it thinks the statement describes. Mark the truth to colour the "
        "picks green (right) or red (wrong)."
    ),
    "heatmap": (
        "What drives each model's score for a statement: how strongly each patch moves the score "
        "(gradient norm at the patch tokens entering the last block; brighter = more influence). "
        "Each map is scaled to its own range; the scores are in the labels."
    ),
    "reconstruction": (
        "The enhanced run's denoiser rebuilds an image from a global token alone, a picture of what "
        "the token remembers. The same denoiser is fed each model's token (seeded noise)."
    ),
    "chat": (
        "Each question goes to the LLaVA built on each tower; the answers stream side by side. "
        "Each side keeps its own conversation (LLaVA's vicuna_v1 template, the image in the first "
        "turn); Clear starts a new one, as does a new image."
    ),
}


def _tab(key: str) -> gr.Tab:
    """Tab ``key`` of :data:`TABS`, its ``elem_id`` ``tab-KEY``."""
    return gr.Tab(dict(TABS)[key], id=key, elem_id=f"tab-{key}")


CSS = """
.gh-message { margin: 6px 0; }
#gh-status table { font-size: 0.85em; }
"""


def _unexpected(exc: Exception) -> str:
    log.exception("demo handler failed")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"something went wrong: {type(exc).__name__}: {text}"


def status_markdown(registry: ModelRegistry) -> str:
    rows = ["| role | model | state |", "|---|---|---|"]
    for role, where, state in registry.status():
        rows.append(f"| {role} | `{where or '-'}` | {state} |")
    return "\n".join(rows)


def _note(text: str) -> str:
    return message_html(text) if text else ""


# --- handlers (component values in, component values out) ----------------------------------------


def _pair_handler(registry: ModelRegistry) -> Callable:
    from demo.pair_test import render_pair, score_pair

    def run(image_a, image_b, s1, s2, t1, t2, variant=None):
        try:
            reg = registry.at(variant)
            return render_pair(score_pair(reg, image_a, image_b, [s1 or "", s2 or ""], [t1, t2]))
        except Exception as exc:
            return message_html(_unexpected(exc), "error")

    return run


def _heatmap_handler(registry: ModelRegistry) -> Callable:
    from demo.heatmap import heatmap_views

    def run(image, statement, variant=None):
        try:
            views, message = heatmap_views(registry.at(variant), image, statement)
        except Exception as exc:
            views, message = [], _unexpected(exc)
        out = []
        by_side = {v.side: v for v in views}
        notes = [message] if message else []
        for side in SIDES:
            v = by_side.get(side)
            if v is None:
                out.append(gr.update(value=None, label=TITLES[side]))
                continue
            if v.error:
                notes.append(f"{TITLES[side]}: {v.error}")
            out.append(gr.update(value=v.overlay, label=f"{TITLES[side]}: {v.caption}"))
        return (*out, _note("\n".join(notes)))

    return run


def _reconstruction_handler(registry: ModelRegistry) -> Callable:
    from demo.images import enlarge
    from demo.reconstruct import reconstruction_views

    def run(image, variant=None):
        try:
            shown, views, message = reconstruction_views(registry.at(variant), image)
        except Exception as exc:
            shown, views, message = None, [], _unexpected(exc)
        by_side = {v.side: v for v in views}
        notes = [message] if message else []
        images = []
        for side in SIDES:
            v = by_side.get(side)
            if v is not None and v.error:
                notes.append(f"{TITLES[side]}: {v.error}")
            images.append(enlarge(v.image) if v is not None else None)
        return (enlarge(shown), *images, _note("\n".join(notes)))

    return run


def _chat_handler(registry: ModelRegistry) -> Callable:
    """Streams ``(original panel, enhanced panel, question box)``; the box empties once asked."""
    from demo.chat import WARNING, chat_panels

    def run(image, question, original, enhanced):
        panels = {"original": original or [], "enhanced": enhanced or []}
        try:
            for out in chat_panels(registry, image, question, panels):
                yield out["original"], out["enhanced"], ""
        except Exception as exc:
            note = {"role": "assistant", "content": f"{WARNING} " + _unexpected(exc)}
            yield [*panels["original"], note], [*panels["enhanced"], note], question

    return run


# --- the page ----------------------------------------------------------------------------------


def _upload(label: str, elem_id: str, height: int = 260) -> gr.Image:
    """An image input the user fills by upload or paste; handlers get its file path."""
    return gr.Image(
        type="filepath", label=label, sources=["upload", "clipboard"], height=height, elem_id=elem_id
    )


def _truth(n: int) -> gr.Radio:
    """Which image statement ``n`` is true of (TRUTH_CHOICES, the first by default)."""
    return gr.Radio(
        list(TRUTH_CHOICES), value=TRUTH_CHOICES[0], label=f"statement {n} is true of", elem_id=f"truth-{n}"
    )


def build_app(
    cfg: DemoConfig, registry: ModelRegistry | None = None, gallery: Gallery | None = None
) -> gr.Blocks:
    """The whole page; models load on first use, so this returns in about a second."""
    from demo.leaderboard_view import load_leaderboard

    registry = registry or ModelRegistry(cfg)
    if gallery is None:
        gallery = load_gallery(cfg.data_root, cfg.gallery_size)
    examples = gallery.examples
    labels = [f"{e.pattern}: {e.statement_a} / {e.statement_b}" for e in examples]

    with gr.Blocks(title="GenHancer: original vs enhanced", analytics_enabled=False) as app:
        app.registry = registry  # for tests and callers that embed the page
        app.gallery = gallery
        gr.Markdown(
            "# GenHancer: original vs enhanced vision encoder\n"
            "Both models answer every question side by side. Models load on first use."
        )
        with gr.Accordion("Models", open=False, elem_id="gh-status"):
            status = gr.Markdown(status_markdown(registry))
            refresh = gr.Button("refresh", size="sm")
        choices = registry.variants()
        variant = gr.Dropdown(
            choices,
            value=FINAL,
            label="enhanced export",
            info="the run's final export or any per-step export (stage2.export_every); reconstructions "
            "use that export's own denoiser",
            visible=len(choices) > 1,
            interactive=True,
            elem_id="enhanced-variant",
        )

        def refresh_models():  # a run still training adds per-step exports
            now = registry.variants()
            return status_markdown(registry), gr.update(choices=now, visible=len(now) > 1)

        refresh.click(refresh_models, None, [status, variant], queue=False)

        with gr.Tabs():
            # --- pair test ---
            with _tab("pair"):
                gr.Markdown(INTROS["pair"])
                with gr.Row():
                    image_a = _upload("image A", "image-a")
                    image_b = _upload("image B", "image-b")
                with gr.Row():
                    with gr.Column():
                        s1 = gr.Textbox(
                            label="statement 1", placeholder="the arrow points left", elem_id="statement-1"
                        )
                        t1 = _truth(1)
                    with gr.Column():
                        s2 = gr.Textbox(label="statement 2 (optional)", elem_id="statement-2")
                        t2 = _truth(2)
                compare = gr.Button("Compare", variant="primary", elem_id="compare")
                pair_out = gr.HTML(elem_id="pair-result")
                compare.click(
                    _pair_handler(registry),
                    [image_a, image_b, s1, s2, t1, t2, variant],
                    pair_out,
                    api_name="pair_test",
                )
                if examples:
                    gr.Examples(
                        [e.row() for e in examples],
                        [image_a, image_b, s1, s2, t1, t2],
                        label=f"Gallery: {gallery.source} (one click fills the form)",
                        example_labels=labels,
                        examples_per_page=max(9, len(examples)),
                    )

            # --- heat map ---
            with _tab("heatmap"):
                gr.Markdown(INTROS["heatmap"])
                with gr.Row():
                    with gr.Column():
                        hm_image = _upload("image", "hm-image")
                        hm_text = gr.Textbox(label="statement", elem_id="hm-statement")
                        hm_go = gr.Button("Explain", variant="primary", elem_id="hm-go")
                    hm_views = [
                        gr.Image(label=TITLES[s], interactive=False, height=280, elem_id=f"hm-{s}")
                        for s in SIDES
                    ]
                hm_note = gr.HTML()
                hm_go.click(
                    _heatmap_handler(registry),
                    [hm_image, hm_text, variant],
                    [*hm_views, hm_note],
                    api_name="heatmap",
                )
                if examples:
                    gr.Examples(
                        [[e.image_a, e.statement_a] for e in examples],
                        [hm_image, hm_text],
                        example_labels=labels,
                    )

            # --- reconstruction ---
            with _tab("reconstruction"):
                gr.Markdown(INTROS["reconstruction"])
                with gr.Row():
                    with gr.Column():
                        rec_image = _upload("image", "rec-image")
                        rec_go = gr.Button("Reconstruct", variant="primary", elem_id="rec-go")
                    rec_input = gr.Image(label="input, as the tower sees it", interactive=False, height=220)
                    rec_views = [
                        gr.Image(
                            label=f"from the {TITLES[s].lower()} token",
                            interactive=False,
                            height=220,
                            elem_id=f"rec-{s}",
                        )
                        for s in SIDES
                    ]
                rec_note = gr.HTML()
                rec_go.click(
                    _reconstruction_handler(registry),
                    [rec_image, variant],
                    [rec_input, *rec_views, rec_note],
                    api_name="reconstruct",
                )
                if examples:
                    gr.Examples(
                        [[e.image_a] for e in examples] + [[e.image_b] for e in examples[:3]], rec_image
                    )

            # --- chat ---
            with _tab("chat"):
                if not registry.has_chat():
                    gr.HTML(
                        message_html(
                            "chat needs two LLaVA models: start the demo with --llava-original DIR "
                            "--llava-enhanced DIR (each a llava-train DIR/final)"
                        )
                    )
                gr.Markdown(INTROS["chat"])
                with gr.Row():
                    with gr.Column(scale=1):
                        chat_image = _upload("image (optional)", "chat-image", height=240)
                        question = gr.Textbox(
                            label="question", placeholder="What color are the shapes?", elem_id="question"
                        )
                        with gr.Row():
                            ask = gr.Button("Ask both", variant="primary", elem_id="ask")
                            clear = gr.Button("Clear", elem_id="chat-clear")
                    panels = [
                        gr.Chatbot(label=f"{TITLES[s]} LLaVA", height=360, elem_id=f"chat-{s}", scale=1)
                        for s in SIDES
                    ]
                chat_run = _chat_handler(registry)
                ask.click(chat_run, [chat_image, question, *panels], [*panels, question], api_name="chat")
                question.submit(chat_run, [chat_image, question, *panels], [*panels, question])
                clear.click(lambda: ([], [], ""), None, [*panels, question], queue=False)
                chat_image.change(lambda _: ([], []), chat_image, panels, queue=False)
                if examples:
                    gr.Examples(
                        [[e.image_a, "What color are the shapes?"] for e in examples[:3]],
                        [chat_image, question],
                    )

            # --- leaderboard ---
            with _tab("leaderboard"):
                board = load_leaderboard(cfg.results)
                board_note = gr.HTML(_note(board.message))
                board_md = gr.Markdown(board.markdown, elem_id="leaderboard-md")
                board_plots = gr.Gallery(
                    board.plots,
                    label="plots",
                    columns=1,
                    height=520,
                    object_fit="contain",
                    visible=bool(board.plots),
                    elem_id="leaderboard-plots",
                )

                def reload():
                    b = load_leaderboard(cfg.results)
                    return _note(b.message), b.markdown, gr.update(value=b.plots, visible=bool(b.plots))

                gr.Button("reload", size="sm").click(
                    reload, None, [board_note, board_md, board_plots], queue=False
                )
        gr.HTML(
            '<p style="font-size:0.8em;color:#777">original: '
            f"<code>{html.escape(cfg.original or '-')}</code> · enhanced: <code>{html.escape(cfg.enhanced or '-')}</code></p>"
        )
    return app


def allowed_paths(cfg: DemoConfig, gallery: Gallery) -> list[str]:
    """Folders the server may serve files from: the gallery and the results plots."""
    paths = [str(gallery.root)]
    if cfg.results and Path(cfg.results).is_dir():
        paths.append(str(Path(cfg.results).resolve()))
    return paths


def launch(app: gr.Blocks, cfg: DemoConfig, block: bool = True, quiet: bool = False):
    """Queue and serve ``app`` on ``cfg.host:cfg.port``; with ``block=False`` return at once
    (call ``app.close()`` to stop). Returns Gradio's ``(app, local_url, share_url)``."""
    app.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    return app.launch(
        server_name=cfg.host,
        server_port=cfg.port,
        share=cfg.share,
        max_file_size=int(cfg.max_upload_mb * 1e6),
        allowed_paths=allowed_paths(cfg, app.gallery),
        prevent_thread_lock=not block,
        quiet=quiet,
        show_error=False,
        footer_links=[],
        css=CSS,
    )
