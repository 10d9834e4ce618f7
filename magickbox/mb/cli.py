"""Placeholder, replaced by the real command line below in the next commits."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("mb: not implemented yet", file=sys.stderr)
    return 1
