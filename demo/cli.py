"""``genhancer-demo``: a web page that compares the original and the enhanced encoder side by side.

Examples::

    genhancer-demo --preset tiny                      # offline, CPU, right after `make quickstart`
    genhancer-demo --original openai/clip-vit-large-patch14 --enhanced runs/oai224 \\
                   --llava-original runs/llava-oai/final --llava-enhanced runs/llava-oai224/final \\
                   --results runs/board --data-root /data/bench

Tabs: pair test (MMVP-style, with a one-click gallery), heat maps, reconstruction from the
global token (needs --enhanced to be an `enhance` run dir), chat (needs the two LLaVA dirs),
leaderboard (needs --results). Models load on first use; a missing one is reported in the page.
Serves on 127.0.0.1:7860 unless --host/--port say otherwise. Exit code 2 with a one-line message
on bad input.
"""

from __future__ import annotations

import argparse
import sys
import typing

from genhancer.runtime.cli import add_config_flags, command, make_parser
from genhancer.runtime.threads import configure_threads, plan_threads

#: Flags that map one-to-one onto DemoConfig keys (flag name with - for _): metavar, help.
CONFIG_FLAGS: dict[str, tuple[str | None, str]] = {
    "original": (
        "ID_OR_DIR",
        "original dual encoder (HF id, dir, hf:ORG/NAME/SUB@REV, WEIGHTS::BASE, genhancer-tiny:clip)",
    ),
    "enhanced": ("DIR", "enhanced encoder: an `enhance` run dir or its export/hf"),
    "denoiser": ("DIR", "run dir or export/denoiser for reconstructions (default: from --enhanced)"),
    "llava_original": ("DIR", "LLaVA (llava-train DIR/final) on the original tower"),
    "llava_enhanced": ("DIR", "LLaVA on the enhanced tower"),
    "results": ("DIR", "leaderboard --output-dir to show"),
    "data_root": ("DIR", "benchmark data root; DIR/mmvp_vlm feeds the gallery"),
    "host": (None, "interface to bind (default 127.0.0.1)"),
    "port": (None, "TCP port (default 7860)"),
}


def build_parser() -> argparse.ArgumentParser:
    from demo.config import DemoConfig

    p = make_parser("genhancer-demo", __doc__)
    types = typing.get_type_hints(DemoConfig)
    for key, (metavar, text) in CONFIG_FLAGS.items():
        p.add_argument(f"--{key.replace('_', '-')}", metavar=metavar, type=types[key], help=text)
    p.add_argument("--share", action="store_true", default=None, help="also ask Gradio for a public link")
    add_config_flags(p, set_help="override one config key (e.g. device=cuda, max_upload_mb=5), repeatable")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return p


def resolve_config(argv: list[str] | None = None):
    """The :class:`~demo.config.DemoConfig` that ``argv`` asks for (UserError on bad input)."""
    from demo.config import load_config

    args = build_parser().parse_args(argv)
    flags = {k: getattr(args, k) for k in CONFIG_FLAGS}
    flags["share"] = args.share
    return args, load_config(args.preset, args.config, args.overrides, flags)


def _warn_missing(cfg, preset: str | None) -> None:
    """Point at wrong paths at start-up too (the page says the same when the model is used)."""
    from pathlib import Path

    from demo.config import QUICKSTART

    if preset == "tiny" and not Path(QUICKSTART).is_dir():
        print(f"genhancer-demo: note: {QUICKSTART} not found; run `make quickstart` first", file=sys.stderr)

    from enhance.towers.spec import check_tower_spec, is_tower_spec

    for key in ("original", "enhanced"):  # hf:REPO/SUB@REV and WEIGHTS::BASE towers: syntax, local files
        if is_tower_spec(getattr(cfg, key)):
            check_tower_spec(getattr(cfg, key), f"--{key}")
    for key in ("enhanced", "denoiser", "llava_original", "llava_enhanced", "results", "data_root"):
        value = getattr(cfg, key)
        if value and not is_tower_spec(value) and not Path(value).expanduser().exists():
            print(f"genhancer-demo: note: --{key.replace('_', '-')} {value} does not exist", file=sys.stderr)
    if not cfg.original and not cfg.enhanced:
        print(
            "genhancer-demo: note: no models given (--original/--enhanced or --preset tiny)", file=sys.stderr
        )


@command("genhancer-demo", also=(OSError,))  # OSError: e.g. the port is taken
def main(argv: list[str] | None = None) -> int:
    args, cfg = resolve_config(argv)
    if args.list_presets:
        from demo.config import list_presets

        for name, text in list_presets():
            print(f"{name:16s} {text}")
        return 0
    plan_threads(args.threads)
    if args.print_config:
        from genhancer.runtime import configtools

        print(configtools.dump_yaml(cfg), end="")
        return 0
    _warn_missing(cfg, args.preset)
    configure_threads("genhancer-demo", args.threads)
    from demo.app import build_app, launch

    app = build_app(cfg)
    print(f"genhancer-demo: serving on http://{cfg.host}:{cfg.port}", file=sys.stderr)
    launch(app, cfg, block=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
