"""``python -m eval.reproduce``: the small-scale study, kept under its old name (see :mod:`eval.study`)."""

import sys

from eval.study.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m eval.reproduce"))
