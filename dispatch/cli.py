"""Command-line entry point for `dispatch` (filled in as features land)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("dispatch: no commands yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
