"""``genhancer-publish``: put an ``enhance`` run on the Hugging Face Hub with a model card.

Examples::

    genhancer-publish runs/oai224 --repo-id my-lab/genhancer-clip-l14 --results runs/board --dry-run
    genhancer-publish runs/oai224 --repo-id my-lab/genhancer-clip-l14 --results runs/board   # uploads

Writes the upload folder (default RUN/publish/NAME): the transformers model and processor, the
open_clip files (CLIP towers), genhancer_export.json, config.yaml and README.md, the model card
(metadata with the base model, licence, tags and, with --results, the board's numbers as
model-index; how to load it in transformers, open_clip and LLaVA; the citation). Without --dry-run
the card is validated by the hub and the folder uploaded (log in first: `hf auth login`). Exit
code 2 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genhancer.runtime.cli import command, make_parser
from genhancer.runtime.errors import UserError, first_line


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("genhancer-publish", __doc__)
    p.add_argument("run", metavar="RUN", help="an `enhance` run folder (with export/hf)")
    p.add_argument("--repo-id", required=True, help="hub repository ORG/NAME")
    p.add_argument("--results", metavar="BOARD_DIR", help="a leaderboard --output-dir that scored the run")
    p.add_argument(
        "--board-model", default="", help="the run's model name on the board (default: found by path)"
    )
    p.add_argument("--out", help="upload folder to write (default: RUN/publish/NAME)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="write the folder, upload nothing")
    return p


@command("genhancer-publish")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from enhance.publish.upload import check_repo_id, run_parts, upload, write_folder

    check_repo_id(args.repo_id)
    run_parts(args.run)
    out = Path(args.out) if args.out else Path(args.run) / "publish" / args.repo_id.split("/")[1]
    folder = write_folder(args.run, args.repo_id, out, args.results, args.board_model)
    result = {"folder": str(folder), "repo_id": args.repo_id, "uploaded": False}
    if not args.dry_run:
        try:
            result["commit"] = upload(folder, args.repo_id, args.private)
        except Exception as exc:  # the hub's errors (auth, network, validation) as one line
            raise UserError(f"upload to {args.repo_id} failed: {first_line(exc)}") from None
        result["uploaded"] = True
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
