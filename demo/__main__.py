"""``python -m demo``: same as ``genhancer-demo``."""

import sys

from demo.cli import main

sys.exit(main())
