"""The one exception type for mistakes a user can fix, and the wrapper that prints it.

Missing data, a malformed flag value, a wrong config key, a checkpoint of another model: each is raised as a
``UserError`` (or a subclass) whose message says what is wrong and how to fix it. Entry points run their
``main`` through :func:`run_cli`, which prints that message as one line, without a traceback, and exits 2;
their :class:`ArgumentParser` reports bad flags the same way. Programming errors are not ``UserError`` and still
raise normally.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """An error caused by input the user controls (paths, flags, files), with a message that says the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are :class:`UserError`, so :func:`run_cli` prints them."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def run_cli(main: Callable[..., T], *args, prog: str | None = None, **kwargs) -> T:
    """Call ``main(*args, **kwargs)``; on :class:`UserError` print ``prog: error: message`` on one line (the
    message's lines joined with "; ") and exit 2."""
    try:
        return main(*args, **kwargs)
    except UserError as err:
        name = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "error")
        message = "; ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"{name}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
