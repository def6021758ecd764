"""`polydiff` command line: train, sample, evaluate, demo."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``polydiff`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    print("polydiff: commands are being built; see README.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
