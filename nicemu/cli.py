"""Command-line entry point for `nicemu`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("nicemu: no commands yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
