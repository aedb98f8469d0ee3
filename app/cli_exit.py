"""How the CLIs end on bad input or Ctrl-C: one line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from app.errors import UserError
from app.exit_codes import EXIT_INTERRUPTED, EXIT_USER_ERROR


def run_cli(command: Callable[[], int], interrupted_message: str = "error: interrupted") -> int:
    """`command()`'s exit status; a UserError prints `error: <message>` and gives 2, Ctrl-C prints
    `interrupted_message` and gives 130."""
    try:
        return command()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(interrupted_message, file=sys.stderr)
        return EXIT_INTERRUPTED


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `error: ... (see PROG --help)`, and exit 2, like every other
    bad input (argparse's own prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
