"""``genhancer-demo``: not yet available (its issue has not landed)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "genhancer-demo is not yet available in this version of genhancer; see the README roadmap.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
