"""``python -m llava_integration`` / ``accelerate launch -m llava_integration``: same as ``llava-train``."""

import sys

from llava_integration.cli import main

sys.exit(main())
