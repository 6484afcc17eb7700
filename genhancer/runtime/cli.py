"""Pieces every console script shares: the common flags and the one-line error.

Each command (``enhance``, ``llava-train``, ``leaderboard``, ``genhancer-demo``) builds its parser
with :func:`make_parser` and :func:`add_config_flags`, and its ``main`` is wrapped in
:func:`command`, which turns a :class:`UserError` into ``prog: error: message`` on stderr with exit
code 2 (:func:`report`). Each checks its arguments
and config before it imports a model library (torch, transformers, diffusers, open_clip, lmms_eval,
gradio), so bad input is refused in a fraction of a second even on a loaded machine, and sets its
torch threads with :func:`genhancer.runtime.threads.configure_threads` before the work starts.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import ParamSpec

from genhancer.runtime.errors import UserError

P = ParamSpec("P")


def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the module docstring's first paragraph, examples as epilog."""
    return argparse.ArgumentParser(
        prog=prog,
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc,
    )


def add_config_flags(
    p: argparse.ArgumentParser, set_help: str = "override one config key (dotted), repeatable"
) -> None:
    """``--preset``, ``--config``, ``--set KEY=VALUE`` (repeatable), ``--list-presets`` and
    ``--threads N`` (:mod:`genhancer.runtime.threads`)."""
    from genhancer.runtime.threads import add_threads_flag

    p.add_argument("--preset", help="named preset (see --list-presets)")
    p.add_argument("--config", help="YAML file overriding the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--list-presets", action="store_true", help="list presets and exit")
    add_threads_flag(p)


def print_presets(presets_dir, width: int = 24) -> None:
    """``--list-presets``: one line per preset, name then its description."""
    from genhancer.runtime.configtools import list_presets, preset_description

    try:
        for name in list_presets(presets_dir):
            print(f"{name:{width}s} {preset_description(presets_dir, name)}")
        sys.stdout.flush()
    except BrokenPipeError:  # `--list-presets | head`: the reader left; no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def setup_logging() -> None:
    """INFO logs with timestamps for the long-running commands (called by the CLI, never a library)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def report(prog: str, exc: UserError) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return exc.exit_code


def command(
    prog: str, also: tuple[type[Exception], ...] = ()
) -> Callable[[Callable[P, int]], Callable[P, int]]:
    """Wrap a console script's ``main``: a :class:`UserError` it raises is reported as
    ``prog: error: message`` and its exit code returned, so no command writes its own handler;
    ``also`` names other errors reported the same way with exit code 2 (the demo's taken port)."""

    def wrap(main: Callable[P, int]) -> Callable[P, int]:
        @functools.wraps(main)
        def run(*args: P.args, **kwargs: P.kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except UserError as exc:
                return report(prog, exc)
            except also as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return UserError.exit_code

        return run

    return wrap


def start_work(prog: str, threads: int | None) -> None:
    """Once the input has passed every check: INFO logs and the torch threads of a long run."""
    from genhancer.runtime.threads import configure_threads

    setup_logging()
    configure_threads(prog, threads)


def start_training(prog: str, args: argparse.Namespace, preflight: Callable[[], None]) -> None:
    """The training commands' way in: ``--output-dir`` is required, ``preflight`` refuses what can
    be refused before torch loads, then :func:`start_work`."""
    if not args.output_dir:
        raise UserError("--output-dir is required to train")
    preflight()
    start_work(prog, args.threads)
