"""What every stnrepro command shares: ``--help`` with examples, bad input as one
``error: ...`` line and exit status 2, a failure as one line and exit status 1.

argparse prints a usage block and exits by itself; the parser here raises instead, so usage
errors read like every other input error (one line naming the argument and what was
expected) and ``main(argv)`` returns its status instead of exiting (tests call it directly).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from stnrepro.errors import StnreproError, exit_status, one_line

__all__ = ["ArgumentParser", "UsageError", "command_parser", "run_command"]


class UsageError(StnreproError):
    """Bad command-line input."""


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def command_parser(prog: str, doc: str | None, **kwargs: Any) -> ArgumentParser:
    """The parser of a command whose module docstring ``doc`` starts with a one-line summary
    followed by an indented block of example command lines: the summary is ``--help``'s
    description and the examples its epilog, so every command's help shows examples."""
    paragraphs = (doc or "").strip().split("\n\n")
    summary = " ".join(paragraphs[0].replace("``", "").split())
    examples = next((p for p in paragraphs[1:] if p.startswith("    ")), "")
    return ArgumentParser(
        prog=prog,
        description=summary,
        epilog=f"examples:\n{examples}" if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def run_command(
    parser: argparse.ArgumentParser,
    command: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """Parse ``argv`` and run ``command``; an error of ours or of the OS is one line on stderr
    and the status :func:`~stnrepro.errors.exit_status` gives (2 bad input, 1 a failure)."""
    try:
        args = parser.parse_args(argv)
        return command(args)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except StnreproError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exit_status(exc)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or one_line(exc)}", file=sys.stderr)
        return exit_status(exc)
