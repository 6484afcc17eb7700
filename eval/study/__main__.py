"""``python -m eval.study``: see :mod:`eval.study.cli`."""

import sys

from eval.study.cli import main

sys.exit(main())
