"""What every stnrepro command shares: bad input is one ``error: ...`` line and exit status 2.

argparse prints a usage block and exits by itself; the parser here raises instead, so usage
errors read like every other input error (one line naming the argument and what was
expected) and ``main(argv)`` returns its status instead of exiting (tests call it directly).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from stnrepro.errors import StnreproError, one_line

__all__ = ["ArgumentParser", "UsageError", "run_command"]


class UsageError(StnreproError):
    """Bad command-line input."""


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (subcommands inherit it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def run_command(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """Parse ``argv`` and run ``command``; input errors -> one line on stderr, status 2."""
    try:
        args = parser.parse_args(argv)
        return command(args)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except StnreproError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or one_line(exc)}", file=sys.stderr)
        return 2
