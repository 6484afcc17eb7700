"""``python -m enhance`` (what ``accelerate launch -m enhance`` runs)."""

import sys

from enhance.cli import main

sys.exit(main())
