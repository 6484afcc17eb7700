"""``genhancer-convert``: write a released state dict as a transformers folder, once.

Examples::

    genhancer-convert OpenAI-ViT-L-14-224.pth --base openai/clip-vit-large-patch14 --out towers/diva-oai224
    genhancer-convert hf:BAAI/DIVA/SigLIP/SigLIP-ViT-SO-14-224.pth \\
        --base google/siglip-so400m-patch14-224 --out towers/diva-siglip224
    leaderboard --clip diva=towers/diva-oai224 ...      # every tool reads the folder directly

Layouts: OpenAI ``clip`` / open_clip ``CLIP`` (OpenAI CLIP, MetaCLIP), open_clip SigLIP (timm trunk),
timm SigLIP (image side; the text side is the base's). The folder holds the base's model class and
processor with the converted weights, and ``genhancer_conversion.json``. Exit code 2 with a
one-line message on bad input (unknown layout, weights of another base, a missing file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genhancer.runtime.cli import command, make_parser
from genhancer.runtime.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("genhancer-convert", __doc__)
    p.add_argument(
        "source", metavar="SRC", help="state dict: a .pth/.pt/.safetensors file or hf:ORG/NAME/PATH"
    )
    p.add_argument("--base", required=True, help="base tower it belongs to: HF id, folder or hf: spec")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    return p


@command("genhancer-convert")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from enhance.towers.spec import BASE_SEP, check_tower_spec

    check_tower_spec(f"{args.source}{BASE_SEP}{args.base}", "SRC/--base")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file")
    from enhance.towers.convert import convert
    from enhance.towers.resolve import resolve_base, weights_file

    base = resolve_base(args.base, option="--base")
    info = convert(weights_file(args.source, "SRC"), base, out, source_label=args.source)
    print(json.dumps({"out": str(out), **info.to_json()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
